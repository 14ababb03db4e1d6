//! The CPU (Flex) implementations: multi-threaded kernels over the tensors' host memory, each
//! file implementing the backend trait of its purpose.

mod attention;
mod kernel;
mod layers;
mod lora;
mod loss;
mod nf4;
mod optim;
