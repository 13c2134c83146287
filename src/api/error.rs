//! The one table of errors: every failure the API can answer, and the one function from a
//! code to (HTTP status, Code, CodeN). Nothing else decides an error's status or CodeN.

use http::StatusCode;

use crate::signing::AuthError;
use crate::store::StoreError;
use crate::throttle::LogThrottle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    MissingParameter,
    InvalidActionOrVersion,
    MethodNotAllowed,
    MissingAuthenticationToken,
    MissingRequestInfo,
    MissingSignature,
    InvalidTimestamp,
    InvalidAccessKey,
    SignatureDoesNotMatch,
    AccessDenied,
    AppNotFound,
    BroadcastNotFound,
    FlowLimitExceeded,
    JsonParsingError,
    InvalidParam,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailableTemp,
    InternalError,
}

impl ErrorCode {
    /// (HTTP status, Code, CodeN). Vendor codes keep the vendor's CodeN; the codes the
    /// vendor documents without a number get ours, from 200001 up (see README).
    pub fn wire(self) -> (StatusCode, &'static str, u32) {
        use ErrorCode::*;
        match self {
            MissingParameter => (StatusCode::BAD_REQUEST, "MissingParameter", 100002),
            MissingAuthenticationToken => (
                StatusCode::UNAUTHORIZED,
                "MissingAuthenticationToken",
                100003,
            ),
            MissingRequestInfo => (StatusCode::BAD_REQUEST, "MissingRequestInfo", 100004),
            MissingSignature => (StatusCode::UNAUTHORIZED, "MissingSignature", 100005),
            InvalidTimestamp => (StatusCode::BAD_REQUEST, "InvalidTimestamp", 100006),
            InvalidActionOrVersion => (StatusCode::NOT_FOUND, "InvalidActionOrVersion", 100008),
            InvalidAccessKey => (StatusCode::UNAUTHORIZED, "InvalidAccessKey", 100009),
            SignatureDoesNotMatch => (StatusCode::UNAUTHORIZED, "SignatureDoesNotMatch", 100010),
            AccessDenied => (StatusCode::FORBIDDEN, "AccessDenied", 100013),
            InternalError => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", 100014),
            FlowLimitExceeded => (StatusCode::TOO_MANY_REQUESTS, "FlowLimitExceeded", 100018),
            ServiceUnavailableTemp => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableTemp",
                100019,
            ),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", 100020),
            JsonParsingError => (StatusCode::BAD_REQUEST, "JsonParsingError", 200001),
            InvalidParam => (StatusCode::BAD_REQUEST, "InvalidParam", 200002),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "InvalidParam", 200002),
            AppNotFound => (StatusCode::NOT_FOUND, "AppNotFound", 200003),
            BroadcastNotFound => (StatusCode::NOT_FOUND, "BroadcastNotFound", 200005),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout", 200004),
        }
    }
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

/// While the store is unavailable every request fails the same way; one line per 10 s.
static STORE_UNAVAILABLE: LogThrottle = LogThrottle::new(std::time::Duration::from_secs(10));

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                if let Some(held) = STORE_UNAVAILABLE.admit() {
                    tracing::warn!(cause = %why, repeated = held, "store unavailable; answering 503");
                }
                ApiError::new(
                    ErrorCode::ServiceUnavailableTemp,
                    "The storage backend is temporarily unavailable; retry later.",
                )
            }
            StoreError::Internal(why) => {
                tracing::error!(cause = %why, "store failure");
                ApiError::new(
                    ErrorCode::InternalError,
                    "Service has some internal error; the RequestId identifies it in the server log.",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_contract() {
        // API.md §2 table, row by row.
        let rows = [
            (
                ErrorCode::MissingAuthenticationToken,
                401,
                "MissingAuthenticationToken",
                100003,
            ),
            (
                ErrorCode::MissingRequestInfo,
                400,
                "MissingRequestInfo",
                100004,
            ),
            (ErrorCode::MissingSignature, 401, "MissingSignature", 100005),
            (ErrorCode::InvalidTimestamp, 400, "InvalidTimestamp", 100006),
            (ErrorCode::InvalidAccessKey, 401, "InvalidAccessKey", 100009),
            (
                ErrorCode::SignatureDoesNotMatch,
                401,
                "SignatureDoesNotMatch",
                100010,
            ),
            (ErrorCode::AccessDenied, 403, "AccessDenied", 100013),
            (
                ErrorCode::FlowLimitExceeded,
                429,
                "FlowLimitExceeded",
                100018,
            ),
            (ErrorCode::MethodNotAllowed, 405, "MethodNotAllowed", 100020),
            (
                ErrorCode::ServiceUnavailableTemp,
                503,
                "ServiceUnavailableTemp",
                100019,
            ),
            (ErrorCode::InternalError, 500, "InternalError", 100014),
            // §7.
            (
                ErrorCode::BroadcastNotFound,
                404,
                "BroadcastNotFound",
                200005,
            ),
        ];
        for (code, status, name, n) in rows {
            let (s, c, cn) = code.wire();
            assert_eq!((s.as_u16(), c, cn), (status, name, n));
        }
    }

    #[test]
    fn store_failures_map_to_503_and_500() {
        let e: ApiError = StoreError::Unavailable("disk".into()).into();
        assert_eq!(e.code.wire().0, StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = StoreError::Internal("bug".into()).into();
        assert_eq!(e.code.wire().0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("bug"));
    }
}
