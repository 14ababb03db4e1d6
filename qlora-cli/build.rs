// The same check as qlora-core: can the tests on a real model run?
include!("../qlora-core/build.rs");
