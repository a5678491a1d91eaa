//! Tests for the HTTP/1.1 codec.
