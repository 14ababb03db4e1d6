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
    /// wgpu pinned to Vulkan with the SPIR-V compiler (builds with the `vulkan` feature), the
    /// `N`th discrete GPU or the default adapter.
    Vulkan(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let indexed = |prefix: &str| s.strip_prefix(prefix).map(str::parse::<usize>);
        match s {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu(None)),
            "cuda" => Ok(DeviceChoice::Cuda(None)),
            "vulkan" => Ok(DeviceChoice::Vulkan(None)),
            other => match (indexed("cuda:"), indexed("wgpu:"), indexed("vulkan:")) {
                (Some(Ok(index)), _, _) => Ok(DeviceChoice::Cuda(Some(index))),
                (_, Some(Ok(index)), _) => Ok(DeviceChoice::Wgpu(Some(index))),
                (_, _, Some(Ok(index))) => Ok(DeviceChoice::Vulkan(Some(index))),
                _ => Err(Error::invalid(format!(
                    "unknown device `{other}`: expected cpu, wgpu[:N], vulkan[:N] or cuda[:N]"
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
            DeviceChoice::Vulkan(None)
                if std::env::var_os("CUBECL_WGPU_DEFAULT_DEVICE").is_none() =>
            {
                DeviceChoice::Vulkan(Some(local_rank))
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
            #[cfg(feature = "vulkan")]
            DeviceChoice::Vulkan(index) => Ok(Device::vulkan(match index {
                Some(n) => burn::tensor::DeviceKind::DiscreteGpu(n),
                None => burn::tensor::DeviceKind::DefaultDevice,
            })),
            #[cfg(not(feature = "vulkan"))]
            DeviceChoice::Vulkan(_) => Err(Error::invalid(
                "this build has no Vulkan (SPIR-V) backend: rebuild with `--features vulkan`",
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
            DeviceChoice::Vulkan(None) => write!(f, "vulkan"),
            DeviceChoice::Vulkan(Some(n)) => write!(f, "vulkan:{n}"),
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

/// What a device is, for a report's header: its name, the runtime that drives it, its memory
/// and the float dtypes it computes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescription {
    /// The device as it names itself (the CPU's model name on the CPU).
    pub name: String,
    /// The runtime and what it compiles for (the CPU's vector instructions on the CPU).
    pub runtime: String,
    /// Device memory in bytes, where the device reports it (host memory on the CPU).
    pub memory: Option<u64>,
    /// The float dtypes it has: f32, and f16/bf16 where supported.
    pub dtypes: Vec<&'static str>,
}

/// [`DeviceDescription`] of `device`.
pub fn describe(device: &Device) -> DeviceDescription {
    use burn::tensor::DType;
    let dtypes = [
        (DType::F32, "f32"),
        (DType::BF16, "bf16"),
        (DType::F16, "f16"),
    ]
    .into_iter()
    .filter(|&(dtype, _)| supports_float(device, dtype))
    .map(|(_, name)| name)
    .collect();
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let burn_dispatch::DispatchDevice::Cube(cube) = device.as_dispatch() {
        let client = cube.client();
        let properties = client.properties();
        return DeviceDescription {
            name: properties.identity.name.clone(),
            runtime: format!("{:?} ({})", device, properties.identity.fingerprint),
            memory: properties.memory.max_memory(),
            dtypes,
        };
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let isa = if has("avx512f") {
        "AVX-512"
    } else if has("avx2") && has("fma") {
        "AVX2+FMA"
    } else {
        "no AVX2"
    };
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    DeviceDescription {
        name: field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        runtime: format!(
            "flex (CPU), {isa}{}, {} threads",
            if has("avx512_bf16") {
                ", bf16 dot products"
            } else {
                ""
            },
            rayon::current_num_threads()
        ),
        memory,
        dtypes,
    }
}

/// Device memory in use and the most held at once since the device started, as cubecl's pools
/// report them (`None` on the CPU, whose memory is the process's resident set).
pub fn device_memory(device: &Device) -> Option<(u64, u64)> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let burn_dispatch::DispatchDevice::Cube(cube) = device.as_dispatch() {
        use cubecl::{MemoryPoolKind, MemoryScope};
        let report = cube.client().memory_report(MemoryScope::Device);
        let usage = report.usage();
        // Pools of pages keep their high-water mark in pages; the others count what they hold.
        let mut peak = 0u64;
        for stream in &report.streams {
            let pools = stream
                .pools
                .dynamic
                .iter()
                .chain([&stream.pools.persistent, &stream.pools.dedicated])
                .chain(stream.auxiliary.iter().flat_map(|a| {
                    a.pools
                        .dynamic
                        .iter()
                        .chain([&a.pools.persistent, &a.pools.dedicated])
                }));
            for pool in pools {
                peak += match pool.kind {
                    MemoryPoolKind::Sliced { page_size, .. }
                    | MemoryPoolKind::Adaptive { page_size, .. } => {
                        (pool.pages_peak * page_size).max(pool.usage.bytes_reserved)
                    }
                    _ => pool.usage.bytes_reserved,
                };
            }
        }
        return Some((usage.bytes_in_use, peak.max(usage.bytes_reserved)));
    }
    let _ = device;
    None
}
