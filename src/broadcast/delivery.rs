//! Webhook delivery (filled in below).
