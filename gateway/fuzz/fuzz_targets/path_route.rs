#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardgate_fuzz::path_route(data));
