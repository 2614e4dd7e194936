#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: anom_fuzz::event::Batch| anom_fuzz::event::structured(input));
