//! Choosing where tensors live: `cpu` (Burn's flex backend), `wgpu[:N]`, `cuda[:N]`.

use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{Error, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (Burn's flex backend).
    #[default]
    Cpu,
    /// A wgpu device (Vulkan, Metal, DX12): discrete GPU N (`wgpu:N`), or, unnamed (`wgpu`),
    /// the default device (for the ranks of a multi-process run, the local rank's GPU).
    Wgpu(Option<usize>),
    /// CUDA device N (`cuda:N`), or, unnamed (`cuda`), device 0 (for the ranks of a
    /// multi-process run, the local rank's).
    Cuda(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let indexed = |prefix: &str| s.strip_prefix(prefix).map(str::parse::<usize>);
        match s {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu(None)),
            "cuda" => Ok(DeviceChoice::Cuda(None)),
            other => match (indexed("cuda:"), indexed("wgpu:")) {
                (Some(Ok(index)), _) => Ok(DeviceChoice::Cuda(Some(index))),
                (_, Some(Ok(index))) => Ok(DeviceChoice::Wgpu(Some(index))),
                _ => Err(Error::invalid(format!(
                    "unknown device `{other}`: expected cpu, wgpu, wgpu:N, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl DeviceChoice {
    /// The device of local rank `local_rank` when `local_world` processes share this machine
    /// (one a device): an unnamed GPU becomes the local rank's (`cuda` -> `cuda:LOCAL_RANK`,
    /// `wgpu` likewise unless `CUBECL_WGPU_DEFAULT_DEVICE` names the device every rank uses);
    /// the CPU and a numbered device stay as they are.
    pub fn on_local_rank(self, local_rank: usize, local_world: usize) -> Self {
        if local_world <= 1 {
            return self;
        }
        match self {
            DeviceChoice::Cuda(None) => DeviceChoice::Cuda(Some(local_rank)),
            DeviceChoice::Wgpu(None)
                if std::env::var_os("CUBECL_WGPU_DEFAULT_DEVICE").is_none() =>
            {
                DeviceChoice::Wgpu(Some(local_rank))
            }
            other => other,
        }
    }

    /// The Burn device, or an error if this build lacks the backend.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu(index) => Ok(Device::wgpu(match index {
                Some(n) => burn::tensor::DeviceKind::DiscreteGpu(n),
                None => burn::tensor::DeviceKind::DefaultDevice,
            })),
            #[cfg(not(feature = "wgpu"))]
            DeviceChoice::Wgpu(_) => Err(Error::invalid(
                "this build has no wgpu backend: rebuild with `--features wgpu`",
            )),
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(index) => Ok(Device::cuda(index.unwrap_or(0))),
            #[cfg(not(feature = "cuda"))]
            DeviceChoice::Cuda(_) => Err(Error::invalid(
                "this build has no CUDA backend: rebuild with `--features cuda`",
            )),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Wgpu(None) => write!(f, "wgpu"),
            DeviceChoice::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
            DeviceChoice::Cuda(None) => write!(f, "cuda"),
            DeviceChoice::Cuda(Some(n)) => write!(f, "cuda:{n}"),
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
