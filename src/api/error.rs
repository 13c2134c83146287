//! The one table of errors: every failure the API can answer, and the one function from a
//! code to (HTTP status, Code, CodeN). Nothing else decides an error's status or CodeN.

use http::StatusCode;

use crate::signing::AuthError;

/// The error codes, one row each: name => (HTTP status, Code, CodeN). Vendor codes keep the
/// vendor's CodeN; the codes the vendor documents without a number get ours, from 200001
/// up (see README). Writes the enum, [`ErrorCode::ALL`] and [`ErrorCode::wire`], so a code
/// cannot be added without its wire form.
macro_rules! error_codes {
    ($($name:ident => ($status:ident, $code:literal, $n:literal),)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($name,)*
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// (HTTP status, Code, CodeN).
            pub fn wire(self) -> (StatusCode, &'static str, u32) {
                match self {
                    $(ErrorCode::$name => (StatusCode::$status, $code, $n),)*
                }
            }
        }
    };
}

error_codes! {
    MissingParameter => (BAD_REQUEST, "MissingParameter", 100002),
    MissingAuthenticationToken => (UNAUTHORIZED, "MissingAuthenticationToken", 100003),
    MissingRequestInfo => (BAD_REQUEST, "MissingRequestInfo", 100004),
    MissingSignature => (UNAUTHORIZED, "MissingSignature", 100005),
    InvalidTimestamp => (BAD_REQUEST, "InvalidTimestamp", 100006),
    InvalidActionOrVersion => (NOT_FOUND, "InvalidActionOrVersion", 100008),
    InvalidAccessKey => (UNAUTHORIZED, "InvalidAccessKey", 100009),
    SignatureDoesNotMatch => (UNAUTHORIZED, "SignatureDoesNotMatch", 100010),
    AccessDenied => (FORBIDDEN, "AccessDenied", 100013),
    InternalError => (INTERNAL_SERVER_ERROR, "InternalError", 100014),
    FlowLimitExceeded => (TOO_MANY_REQUESTS, "FlowLimitExceeded", 100018),
    ServiceUnavailableTemp => (SERVICE_UNAVAILABLE, "ServiceUnavailableTemp", 100019),
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "MethodNotAllowed", 100020),
    JsonParsingError => (BAD_REQUEST, "JsonParsingError", 200001),
    InvalidParam => (BAD_REQUEST, "InvalidParam", 200002),
    PayloadTooLarge => (PAYLOAD_TOO_LARGE, "InvalidParam", 200002),
    HeadersTooLarge => (REQUEST_HEADER_FIELDS_TOO_LARGE, "InvalidParam", 200002),
    UriTooLong => (URI_TOO_LONG, "InvalidParam", 200002),
    AppNotFound => (NOT_FOUND, "AppNotFound", 200003),
    RequestTimeout => (REQUEST_TIMEOUT, "RequestTimeout", 200004),
    BroadcastNotFound => (NOT_FOUND, "BroadcastNotFound", 200005),
    EventCursorExpired => (GONE, "EventCursorExpired", 200006),
    MalformedRequest => (BAD_REQUEST, "MalformedRequest", 200007),
}

/// An error answer: the code and a message naming the field or limit at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for FlowLimitExceeded.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParam, message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingAuthorization => ApiError::new(
                ErrorCode::MissingAuthenticationToken,
                "Request is missing Authentication Token.",
            ),
            AuthError::Malformed(why) => ApiError::new(ErrorCode::MissingRequestInfo, why),
            AuthError::MissingSignature => ApiError::new(
                ErrorCode::MissingSignature,
                "The request is missing signature.",
            ),
            AuthError::Expired(why) => ApiError::new(ErrorCode::InvalidTimestamp, why),
            AuthError::Mismatch(why) => ApiError::new(
                ErrorCode::SignatureDoesNotMatch,
                format!(
                    "The request signature we calculated does not match the signature you provided ({why}). \
                     Check your Secret Access Key and signing method."
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_matches_the_contract() {
        // API.md §2, §5, §7 and README's error table, row by row: every code the server
        // can answer, so adding one without its row here fails.
        let rows = [
            ("MissingParameter", 400, "MissingParameter", 100002),
            (
                "MissingAuthenticationToken",
                401,
                "MissingAuthenticationToken",
                100003,
            ),
            ("MissingRequestInfo", 400, "MissingRequestInfo", 100004),
            ("MissingSignature", 401, "MissingSignature", 100005),
            ("InvalidTimestamp", 400, "InvalidTimestamp", 100006),
            (
                "InvalidActionOrVersion",
                404,
                "InvalidActionOrVersion",
                100008,
            ),
            ("InvalidAccessKey", 401, "InvalidAccessKey", 100009),
            (
                "SignatureDoesNotMatch",
                401,
                "SignatureDoesNotMatch",
                100010,
            ),
            ("AccessDenied", 403, "AccessDenied", 100013),
            ("InternalError", 500, "InternalError", 100014),
            ("FlowLimitExceeded", 429, "FlowLimitExceeded", 100018),
            (
                "ServiceUnavailableTemp",
                503,
                "ServiceUnavailableTemp",
                100019,
            ),
            ("MethodNotAllowed", 405, "MethodNotAllowed", 100020),
            ("JsonParsingError", 400, "JsonParsingError", 200001),
            ("InvalidParam", 400, "InvalidParam", 200002),
            ("PayloadTooLarge", 413, "InvalidParam", 200002),
            ("HeadersTooLarge", 431, "InvalidParam", 200002),
            ("UriTooLong", 414, "InvalidParam", 200002),
            ("AppNotFound", 404, "AppNotFound", 200003),
            ("RequestTimeout", 408, "RequestTimeout", 200004),
            ("BroadcastNotFound", 404, "BroadcastNotFound", 200005),
            ("EventCursorExpired", 410, "EventCursorExpired", 200006),
            ("MalformedRequest", 400, "MalformedRequest", 200007),
        ];
        assert_eq!(ErrorCode::ALL.len(), rows.len(), "a code without its row");
        for (code, (name, status, wire, n)) in ErrorCode::ALL.iter().zip(rows) {
            assert_eq!(format!("{code:?}"), name);
            let (s, c, cn) = code.wire();
            assert_eq!((s.as_u16(), c, cn), (status, wire, n), "{name}");
        }
    }
}
