//! shardgate-runtime: the thread-per-core substrate (in progress).
