//! jwk (in progress)
