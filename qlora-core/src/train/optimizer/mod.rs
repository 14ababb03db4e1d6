//! Paged AdamW: decoupled weight decay, 32-bit or 8-bit blockwise moments, and the moments
//! paged between host memory and the device under a byte budget.
//!
//! Each parameter's moments live in host memory; an update pages them onto the device (the
//! least recently used resident states go back to the host when the budget is exceeded), runs
//! there, and leaves them resident. Paging copies bits, so any budget gives the same
//! parameters as no budget at all. On CPU the same path runs with host memory on both sides.

use std::collections::VecDeque;

use burn::tensor::{Device, Tensor};

use crate::backend::{AdamWStep, ops};
use crate::error::{Error, Result};
use blockwise_state::{STATE_BLOCK, StateCodeMap};
use paging::Moment;

mod blockwise_state;
mod paging;

/// Tensors smaller than this keep 32-bit moments even with an 8-bit optimizer
/// (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

crate::named_enum! {
    pub enum OptimizerKind: "optimizer" {
        PagedAdamW32 = "paged_adamw_32bit",
        PagedAdamW8 = "paged_adamw_8bit",
        AdamW32 = "adamw_32bit" | "adamw_torch" | "adamw",
        AdamW8 = "adamw_8bit" | "adamw_bnb_8bit",
    }
}

impl OptimizerKind {
    pub fn eight_bit(self) -> bool {
        matches!(self, OptimizerKind::PagedAdamW8 | OptimizerKind::AdamW8)
    }

    pub fn paged(self) -> bool {
        matches!(
            self,
            OptimizerKind::PagedAdamW8 | OptimizerKind::PagedAdamW32
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
struct ParamState {
    /// Elements of the parameter (the moments are padded to whole blocks when 8-bit).
    numel: usize,
    eight_bit: bool,
    m: Moment,
    v: Moment,
}

/// Host form of one parameter's state, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum SavedMoments {
    F32 {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    U8 {
        m_codes: Vec<u8>,
        m_absmax: Vec<f32>,
        v_codes: Vec<u8>,
        v_absmax: Vec<f32>,
    },
}

pub struct PagedAdamW {
    kind: OptimizerKind,
    config: AdamWConfig,
    device: Device,
    /// Resident bytes allowed on the device; `None` means no limit.
    budget: Option<usize>,
    states: Vec<ParamState>,
    /// Parameter indices in least-recently-used order (front = oldest) of those resident.
    lru: VecDeque<usize>,
    step: u64,
    signed: Option<StateCodeMap>,
    unsigned: Option<StateCodeMap>,
    /// Bytes moved host -> device and device -> host, for reports.
    pub paged_in: usize,
    pub paged_out: usize,
}

impl PagedAdamW {
    /// Zeroed moments for parameters of `sizes` elements.
    pub fn new(
        kind: OptimizerKind,
        config: AdamWConfig,
        sizes: &[usize],
        budget_bytes: Option<usize>,
        device: &Device,
    ) -> Self {
        let states = sizes
            .iter()
            .map(|&numel| {
                let eight_bit = kind.eight_bit() && numel >= MIN_8BIT_SIZE;
                let (m, v) = if eight_bit {
                    let padded = numel.div_ceil(STATE_BLOCK) * STATE_BLOCK;
                    let zero = || Moment::HostU8 {
                        codes: vec![0; padded],
                        absmax: vec![0.0; padded / STATE_BLOCK],
                    };
                    (zero(), zero())
                } else {
                    (
                        Moment::HostF32(vec![0.0; numel]),
                        Moment::HostF32(vec![0.0; numel]),
                    )
                };
                ParamState {
                    numel,
                    eight_bit,
                    m,
                    v,
                }
            })
            .collect();
        let any_8bit = kind.eight_bit();
        PagedAdamW {
            kind,
            config,
            device: device.clone(),
            budget: if kind.paged() { budget_bytes } else { None },
            states,
            lru: VecDeque::new(),
            step: 0,
            signed: any_8bit.then(|| StateCodeMap::new(true, device)),
            unsigned: any_8bit.then(|| StateCodeMap::new(false, device)),
            paged_in: 0,
            paged_out: 0,
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Bytes of moment state in all.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.m.bytes() + s.v.bytes()).sum()
    }

    /// Start a step (once per optimizer step, before the per-parameter updates).
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Update parameter `i` with gradient `grad · grad_scale` (both of the parameter's
    /// shape) at `lr`.
    pub fn update<const D: usize>(
        &mut self,
        i: usize,
        param: Tensor<D>,
        grad: Tensor<D>,
        grad_scale: f64,
        lr: f64,
    ) -> Tensor<D> {
        assert!(self.step > 0, "begin_step first");
        self.page_in(i);
        let shape = param.dims();
        let numel = self.states[i].numel;
        let flat_p = param.reshape([numel]);
        let flat_g = grad.reshape([numel]);
        let eight_bit = self.states[i].eight_bit;
        let padded = if eight_bit {
            numel.div_ceil(STATE_BLOCK) * STATE_BLOCK
        } else {
            numel
        };
        let (m, v) = {
            let s = &self.states[i];
            match (&s.m, &s.v) {
                (Moment::DeviceF32(m), Moment::DeviceF32(v)) => (m.clone(), v.clone()),
                (Moment::DeviceU8(m), Moment::DeviceU8(v)) => (
                    blockwise_state::dequantize(m, self.signed.as_ref().expect("8-bit maps"))
                        .narrow(0, 0, numel),
                    blockwise_state::dequantize(v, self.unsigned.as_ref().expect("8-bit maps"))
                        .narrow(0, 0, numel),
                ),
                _ => unreachable!("paged in"),
            }
        };
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let settings = AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: self.step,
            grad_scale,
        };
        let (updated, m, v) = ops::adamw_step(flat_p, flat_g, m, v, settings);

        let s = &mut self.states[i];
        if eight_bit {
            let pad = |x: Tensor<1>| {
                if padded > numel {
                    let device = x.device();
                    Tensor::cat(vec![x, Tensor::zeros([padded - numel], &device)], 0)
                } else {
                    x
                }
            };
            s.m = Moment::DeviceU8(blockwise_state::quantize(
                pad(m),
                self.signed.as_ref().expect("maps"),
            ));
            s.v = Moment::DeviceU8(blockwise_state::quantize(
                pad(v),
                self.unsigned.as_ref().expect("maps"),
            ));
        } else {
            s.m = Moment::DeviceF32(m);
            s.v = Moment::DeviceF32(v);
        }
        updated.reshape(shape)
    }

    /// Every moment in host form (paging everything out), for a checkpoint.
    pub fn save(&mut self) -> (u64, Vec<SavedMoments>) {
        self.lru.clear();
        let saved = self
            .states
            .iter_mut()
            .map(|s| {
                s.m = std::mem::replace(&mut s.m, Moment::HostF32(Vec::new())).into_host();
                s.v = std::mem::replace(&mut s.v, Moment::HostF32(Vec::new())).into_host();
                match (&s.m, &s.v) {
                    (Moment::HostF32(m), Moment::HostF32(v)) => SavedMoments::F32 {
                        m: m.clone(),
                        v: v.clone(),
                    },
                    (
                        Moment::HostU8 {
                            codes: mc,
                            absmax: ma,
                        },
                        Moment::HostU8 {
                            codes: vc,
                            absmax: va,
                        },
                    ) => SavedMoments::U8 {
                        m_codes: mc.clone(),
                        m_absmax: ma.clone(),
                        v_codes: vc.clone(),
                        v_absmax: va.clone(),
                    },
                    _ => unreachable!("paged out"),
                }
            })
            .collect();
        (self.step, saved)
    }

    /// Restore moments saved by [`PagedAdamW::save`] (for the same parameters and kind).
    pub fn restore(&mut self, step: u64, saved: Vec<SavedMoments>) -> Result<()> {
        if saved.len() != self.states.len() {
            return Err(Error::invalid(format!(
                "optimizer state holds {} parameters, the model has {}",
                saved.len(),
                self.states.len()
            )));
        }
        for (i, (s, moments)) in self.states.iter_mut().zip(saved).enumerate() {
            let padded = s.numel.div_ceil(STATE_BLOCK) * STATE_BLOCK;
            match (s.eight_bit, moments) {
                (false, SavedMoments::F32 { m, v }) if m.len() == s.numel && v.len() == s.numel => {
                    s.m = Moment::HostF32(m);
                    s.v = Moment::HostF32(v);
                }
                (
                    true,
                    SavedMoments::U8 {
                        m_codes,
                        m_absmax,
                        v_codes,
                        v_absmax,
                    },
                ) if m_codes.len() == padded && v_codes.len() == padded => {
                    s.m = Moment::HostU8 {
                        codes: m_codes,
                        absmax: m_absmax,
                    };
                    s.v = Moment::HostU8 {
                        codes: v_codes,
                        absmax: v_absmax,
                    };
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "optimizer state of parameter {i} does not match ({} elements, {})",
                        s.numel,
                        if s.eight_bit { "8-bit" } else { "32-bit" }
                    )));
                }
            }
        }
        self.lru.clear();
        self.step = step;
        Ok(())
    }
}
