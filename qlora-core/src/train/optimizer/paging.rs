//! Paging: each parameter's moments live in host memory until an update needs them; they are
//! then moved onto the device and stay there, the least recently used going back to the host
//! when the resident bytes would exceed the budget. Paging copies bits, so any budget gives
//! the same parameters as no budget at all.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::PagedAdamW;
use super::blockwise_state::{codes_from_words, codes_tensor};

/// One moment of one parameter, where it currently lives.
// Two per parameter, so the size of a tensor handle in the device variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(super) enum Moment {
    HostF32(Vec<f32>),
    HostU8 {
        codes: Vec<u8>,
        absmax: Vec<f32>,
    },
    DeviceF32(Tensor<1>),
    /// `len` u8 codes packed four to a u32 word (a byte a value) and an f32 absmax a block.
    DeviceU8 {
        codes: Tensor<1, Int>,
        absmax: Tensor<1>,
        len: usize,
    },
}

impl Moment {
    pub(super) fn bytes(&self) -> usize {
        match self {
            Moment::HostF32(v) => 4 * v.len(),
            Moment::HostU8 { codes, absmax } => codes.len() + 4 * absmax.len(),
            Moment::DeviceF32(t) => 4 * t.dims()[0],
            Moment::DeviceU8 { codes, absmax, .. } => 4 * codes.dims()[0] + 4 * absmax.dims()[0],
        }
    }

    pub(super) fn on_device(&self) -> bool {
        matches!(self, Moment::DeviceF32(_) | Moment::DeviceU8 { .. })
    }

    pub(super) fn into_device(self, device: &Device) -> Moment {
        match self {
            Moment::HostF32(v) => {
                let n = v.len();
                Moment::DeviceF32(Tensor::from_data(TensorData::new(v, [n]), device))
            }
            Moment::HostU8 { codes, absmax } => {
                let (blocks, len) = (absmax.len(), codes.len());
                Moment::DeviceU8 {
                    codes: codes_tensor(&codes, device),
                    absmax: Tensor::from_data(TensorData::new(absmax, [blocks]), device),
                    len,
                }
            }
            resident => resident,
        }
    }

    pub(super) fn into_host(self) -> Moment {
        match self {
            Moment::DeviceF32(t) => {
                Moment::HostF32(t.into_data().try_into_vec().expect("f32 state"))
            }
            Moment::DeviceU8 { codes, absmax, len } => Moment::HostU8 {
                codes: codes_from_words(codes, len),
                absmax: absmax.into_data().try_into_vec().expect("f32 absmax"),
            },
            host => host,
        }
    }
}

impl PagedAdamW {
    pub(super) fn resident_bytes(&self) -> usize {
        self.states
            .iter()
            .filter(|s| s.m.on_device())
            .map(|s| s.m.bytes() + s.v.bytes())
            .sum()
    }

    /// Bring parameter `i`'s moments onto the device, paging others out to fit the budget.
    pub(super) fn page_in(&mut self, i: usize) {
        self.lru.retain(|&j| j != i);
        if !self.states[i].m.on_device() {
            let need = self.states[i].m.bytes() + self.states[i].v.bytes();
            if let Some(budget) = self.budget {
                while self.resident_bytes() + need > budget {
                    let Some(oldest) = self.lru.pop_front() else {
                        break;
                    };
                    let s = &mut self.states[oldest];
                    self.paged_out += s.m.bytes() + s.v.bytes();
                    s.m = std::mem::replace(&mut s.m, Moment::HostF32(Vec::new())).into_host();
                    s.v = std::mem::replace(&mut s.v, Moment::HostF32(Vec::new())).into_host();
                }
            }
            let s = &mut self.states[i];
            if self.pages {
                self.paged_in += need;
            }
            s.m =
                std::mem::replace(&mut s.m, Moment::HostF32(Vec::new())).into_device(&self.device);
            s.v =
                std::mem::replace(&mut s.v, Moment::HostF32(Vec::new())).into_device(&self.device);
        }
        self.lru.push_back(i);
    }
}
