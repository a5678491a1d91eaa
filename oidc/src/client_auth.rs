//! client_auth (in progress)
