#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: anom_fuzz::definition::Mutated| anom_fuzz::definition::structured(input));
