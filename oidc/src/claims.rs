//! claims (in progress)
