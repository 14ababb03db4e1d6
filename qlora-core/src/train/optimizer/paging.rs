//! Paging: each parameter's moments live in host memory until an update needs them; they are
//! then moved onto the device and stay there, the least recently used going back to the host
//! when the resident bytes would exceed the budget. Paging copies bits, so any budget gives
//! the same parameters as no budget at all.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::blockwise_state::{codes_from_words, codes_tensor};
use super::{PagedAdamW, SavedMoments};

/// Both moments of one parameter, where they currently live. The host form is that of a
/// checkpoint.
// One per parameter, so the size of a tensor handle in the device variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(super) enum Moments {
    Host(SavedMoments),
    DeviceF32 {
        m: Tensor<1>,
        v: Tensor<1>,
    },
    /// `len` values of each moment: the code words of the first moment then the second's (a
    /// byte a value), and their block maxima likewise (`Blockwise8`'s layout).
    DeviceU8 {
        codes: Tensor<1, Int>,
        absmax: Tensor<1>,
        len: usize,
    },
}

impl Moments {
    pub(super) fn bytes(&self) -> usize {
        match self {
            Moments::Host(SavedMoments::F32 { m, v }) => 4 * (m.len() + v.len()),
            Moments::Host(SavedMoments::U8 {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            }) => m_codes.len() + v_codes.len() + 4 * (m_absmax.len() + v_absmax.len()),
            Moments::DeviceF32 { m, v } => 4 * (m.dims()[0] + v.dims()[0]),
            Moments::DeviceU8 { codes, absmax, .. } => 4 * (codes.dims()[0] + absmax.dims()[0]),
        }
    }

    pub(super) fn on_device(&self) -> bool {
        !matches!(self, Moments::Host(_))
    }

    pub(super) fn into_device(self, device: &Device) -> Moments {
        let floats = |v: Vec<f32>| {
            let n = v.len();
            Tensor::<1>::from_data(TensorData::new(v, [n]), device)
        };
        match self {
            Moments::Host(SavedMoments::F32 { m, v }) => Moments::DeviceF32 {
                m: floats(m),
                v: floats(v),
            },
            Moments::Host(SavedMoments::U8 {
                m_codes,
                m_absmax,
                v_codes,
                v_absmax,
            }) => Moments::DeviceU8 {
                len: m_codes.len(),
                codes: codes_tensor(&m_codes, &v_codes, device),
                absmax: floats([m_absmax, v_absmax].concat()),
            },
            resident => resident,
        }
    }

    pub(super) fn into_host(self) -> Moments {
        let floats =
            |t: Tensor<1>| -> Vec<f32> { t.into_data().try_into_vec().expect("f32 state") };
        match self {
            Moments::DeviceF32 { m, v } => Moments::Host(SavedMoments::F32 {
                m: floats(m),
                v: floats(v),
            }),
            Moments::DeviceU8 { codes, absmax, len } => {
                let (m_codes, v_codes) = codes_from_words(codes, len);
                let mut m_absmax = floats(absmax);
                let v_absmax = m_absmax.split_off(m_absmax.len() / 2);
                Moments::Host(SavedMoments::U8 {
                    m_codes,
                    m_absmax,
                    v_codes,
                    v_absmax,
                })
            }
            host => host,
        }
    }
}

impl PagedAdamW {
    pub(super) fn resident_bytes(&self) -> usize {
        self.states
            .iter()
            .filter(|s| s.moments.on_device())
            .map(|s| s.moments.bytes())
            .sum()
    }

    /// Bring parameter `i`'s moments onto the device, paging others out to fit the budget.
    pub(super) fn page_in(&mut self, i: usize) {
        self.lru.retain(|&j| j != i);
        if !self.states[i].moments.on_device() {
            let need = self.states[i].moments.bytes();
            if let Some(budget) = self.budget {
                while self.resident_bytes() + need > budget {
                    let Some(oldest) = self.lru.pop_front() else {
                        break;
                    };
                    let s = &mut self.states[oldest];
                    self.paged_out += s.moments.bytes();
                    s.moments = s.take().into_host();
                }
            }
            let s = &mut self.states[i];
            if self.pages {
                self.paged_in += need;
            }
            s.moments = s.take().into_device(&self.device);
        }
        self.lru.push_back(i);
    }
}
