// The same check as the root package: can the tests on a real model run?
include!("../build.rs");
