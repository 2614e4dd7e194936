#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: anom_fuzz::csv::Table| anom_fuzz::csv::structured(input));
