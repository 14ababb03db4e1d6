//! Choosing where tensors live: `cpu` (Burn's flex backend), `wgpu`, `cuda[:N]`.

use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{Error, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (Burn's Flex backend).
    #[default]
    Cpu,
    /// The default wgpu device (Vulkan, Metal, DX12).
    Wgpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(index)) => Ok(DeviceChoice::Cuda(index)),
                _ => Err(Error::invalid(format!(
                    "unknown device `{other}`: expected cpu, wgpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl DeviceChoice {
    /// The Burn device, or an error if this build lacks the backend.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Wgpu => Err(Error::invalid(
                "this build has no wgpu backend: rebuild with `--features wgpu`",
            )),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(index) => Ok(Device::cuda(index)),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda(_) => Err(Error::invalid(
                "this build has no CUDA backend: rebuild with `--features cuda`",
            )),
        }
    }
}

/// Whether kernels on `device` can compute in `dtype`: every float type on the CPU; on the GPU
/// backends what the runtime reports (WGSL, for one, has f16 but no bf16).
pub fn supports_float(device: &Device, dtype: burn::tensor::DType) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let burn_dispatch::DispatchDevice::Cube(cube) = device.as_dispatch() {
        use cubecl::ir::{ElemType, FloatKind};
        let kind = match dtype {
            burn::tensor::DType::BF16 => FloatKind::BF16,
            burn::tensor::DType::F16 => FloatKind::F16,
            _ => FloatKind::F32,
        };
        return cube
            .client()
            .properties()
            .supports_type(ElemType::Float(kind));
    }
    let _ = (device, dtype);
    true
}

/// Whether `device` is a GPU backend's (not the CPU).
pub fn is_gpu(device: &Device) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let burn_dispatch::DispatchDevice::Cube(_) = device.as_dispatch() {
        return true;
    }
    let _ = device;
    false
}

/// Bytes the device may hold at once, as its runtime reports them (CUDA: the card's memory;
/// Vulkan: its largest device-local heap), or `None` where there is no figure: the CPU, whose
/// memory is the host's, and runtimes that report none.
pub fn memory_capacity(device: &Device) -> Option<u64> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let burn_dispatch::DispatchDevice::Cube(cube) = device.as_dispatch() {
        return cube.client().properties().memory.max_memory();
    }
    let _ = device;
    None
}
