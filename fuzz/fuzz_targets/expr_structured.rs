#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: anom_fuzz::expr::Expr| anom_fuzz::expr::structured(input));
