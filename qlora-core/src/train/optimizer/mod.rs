//! Paged AdamW: decoupled weight decay, 32-bit or 8-bit blockwise moments, and the moments
//! paged between host memory and the device under a byte budget.
//!
//! The arithmetic is that of the library each name comes from: `adamw_32bit` is
//! `torch.optim.AdamW`, `paged_adamw_32bit` bitsandbytes' 32-bit update, the 8-bit kinds
//! bitsandbytes' `AdamW8bit` (u8 codes in blocks of 256 with an f32 absmax a block: about
//! 2.03 bytes a value for both moments; tensors under 4096 values keep 32-bit moments).
//!
//! Paged kinds on a GPU keep each parameter's moments in host memory until an update needs
//! them, then on the device, the least recently used going back to the host when the resident
//! bytes would exceed the budget. Paging copies bits, so any budget gives the same parameters
//! as no budget at all. On the CPU there is nothing to page to: paged kinds equal their
//! unpaged forms, as in bitsandbytes.

use std::collections::VecDeque;

use burn::tensor::{Device, Tensor};

use crate::backend::{AdamWArithmetic, AdamWStep, ops};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use blockwise_state::{DeviceMaps, STATE_BLOCK};
use paging::Moments;

mod blockwise_state;
mod paging;

/// Whether `device` is the CPU (where the "device" memory is host memory).
fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
}

/// Tensors smaller than this keep 32-bit moments even with an 8-bit optimizer
/// (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

crate::named_enum! {
    /// The optimizer: AdamW with 32- or 8-bit states, paged or not (bitsandbytes' names).
    pub enum OptimizerKind: "optimizer" {
        /// 32-bit states paging between device and host (the QLoRA default).
        PagedAdamW32 = "paged_adamw_32bit",
        /// bitsandbytes' 8-bit blockwise states, paging.
        PagedAdamW8 = "paged_adamw_8bit",
        /// `torch.optim.AdamW`.
        AdamW32 = "adamw_32bit" | "adamw_torch" | "adamw",
        /// bitsandbytes' `AdamW8bit`.
        AdamW8 = "adamw_8bit" | "adamw_bnb_8bit",
    }
}

impl OptimizerKind {
    /// Whether the states are 8-bit.
    pub fn eight_bit(self) -> bool {
        matches!(self, OptimizerKind::PagedAdamW8 | OptimizerKind::AdamW8)
    }

    /// Whether the states page between device and host.
    pub fn paged(self) -> bool {
        matches!(
            self,
            OptimizerKind::PagedAdamW8 | OptimizerKind::PagedAdamW32
        )
    }
}

/// AdamW's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the second moment's root.
    pub eps: f64,
    /// Decoupled weight decay.
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
    /// Elements of the parameter.
    numel: usize,
    eight_bit: bool,
    moments: Moments,
}

impl ParamState {
    /// The moments, leaving an empty placeholder until they are put back.
    fn take(&mut self) -> Moments {
        std::mem::replace(
            &mut self.moments,
            Moments::Host(SavedMoments::F32 {
                m: Vec::new(),
                v: Vec::new(),
            }),
        )
    }
}

/// Host form of one parameter's state, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum SavedMoments {
    /// 32-bit moments.
    F32 {
        /// The first moment.
        m: Vec<f32>,
        /// The second moment.
        v: Vec<f32>,
    },
    /// 8-bit blockwise moments.
    U8 {
        /// The first moment's codes.
        m_codes: Vec<u8>,
        /// Its block maxima.
        m_absmax: Vec<f32>,
        /// The second moment's codes.
        v_codes: Vec<u8>,
        /// Its block maxima.
        v_absmax: Vec<f32>,
    },
}

/// AdamW over the adapters' parameters, with 32- or 8-bit states that page between the device and
/// host memory under a budget.
pub struct PagedAdamW {
    kind: OptimizerKind,
    config: AdamWConfig,
    device: Device,
    /// Whether moments move between host and device (a paged kind on a GPU); otherwise they
    /// live on the device from their first update on and the paging counters stay at 0.
    pages: bool,
    /// Resident bytes allowed on the device; `None` means no limit.
    budget: Option<usize>,
    states: Vec<ParamState>,
    /// Parameter indices in least-recently-used order (front = oldest) of those resident.
    lru: VecDeque<usize>,
    step: u64,
    maps: Option<DeviceMaps>,
    /// Bytes moved host -> device and device -> host, for reports.
    pub paged_in: usize,
    /// Bytes moved device -> host, for reports.
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
                let blocks = numel.div_ceil(STATE_BLOCK);
                let zeros = if eight_bit {
                    SavedMoments::U8 {
                        m_codes: vec![0; numel],
                        m_absmax: vec![0.0; blocks],
                        v_codes: vec![0; numel],
                        v_absmax: vec![0.0; blocks],
                    }
                } else {
                    SavedMoments::F32 {
                        m: vec![0.0; numel],
                        v: vec![0.0; numel],
                    }
                };
                ParamState {
                    numel,
                    eight_bit,
                    moments: Moments::Host(zeros),
                }
            })
            .collect();
        let any_8bit = kind.eight_bit();
        // On the CPU the "device" is host memory: nothing to page to.
        let pages = kind.paged() && !is_cpu(device);
        PagedAdamW {
            kind,
            config,
            device: device.clone(),
            pages,
            budget: if pages { budget_bytes } else { None },
            states,
            lru: VecDeque::new(),
            step: 0,
            maps: any_8bit.then(|| DeviceMaps::new(device)),
            paged_in: 0,
            paged_out: 0,
        }
    }

    /// Which optimizer it is.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Bytes of moment state in all.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| s.moments.bytes()).sum()
    }

    /// Bytes of parameter `i`'s moments.
    pub fn parameter_state_bytes(&self, i: usize) -> usize {
        self.states[i].moments.bytes()
    }

    /// Start a step (once per optimizer step, before the per-parameter updates).
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// One optimizer step over every adapter of `model`: `grads` holds each adapter's
    /// `(dA, dB)` in the model's order, parameters `2k` and `2k + 1`; each gradient is scaled
    /// by `grad_scale`.
    pub fn step_adapters(
        &mut self,
        model: &mut CausalLm,
        grads: Vec<(Tensor<2>, Tensor<2>)>,
        grad_scale: f64,
        lr: f64,
    ) {
        self.begin_step();
        let adapters = model
            .linears_mut()
            .into_iter()
            .filter_map(|(_, l)| l.lora.as_mut());
        for (k, ((ga, gb), adapter)) in grads.into_iter().zip(adapters).enumerate() {
            adapter.a = self.update(2 * k, adapter.a.clone(), ga, grad_scale, lr);
            adapter.b = self.update(2 * k + 1, adapter.b.clone(), gb, grad_scale, lr);
        }
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
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let eight_bit = self.states[i].eight_bit;
        let arithmetic = match self.kind {
            OptimizerKind::AdamW32 => AdamWArithmetic::Torch,
            // bitsandbytes' optimizers, whose small tensors keep 32-bit moments too.
            _ => AdamWArithmetic::Bitsandbytes,
        };
        let settings = AdamWStep {
            arithmetic,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: self.step,
            grad_scale,
        };
        let s = &mut self.states[i];
        let updated = match s.take() {
            Moments::DeviceF32 { m, v } => {
                let (p, m, v) = ops::adamw_step(flat_p, flat_g, m, v, settings);
                s.moments = Moments::DeviceF32 { m, v };
                p
            }
            Moments::DeviceU8 { codes, absmax, len } => {
                let maps = self.maps.as_ref().expect("8-bit maps").operand();
                let (p, (codes, absmax)) =
                    ops::adamw8_step(flat_p, flat_g, (codes, absmax), maps, settings);
                s.moments = Moments::DeviceU8 { codes, absmax, len };
                p
            }
            Moments::Host(_) => unreachable!("paged in"),
        };
        debug_assert!(eight_bit == matches!(s.moments, Moments::DeviceU8 { .. }));
        updated.reshape(shape)
    }

    /// Every moment in host form (paging everything out), for a checkpoint.
    pub fn save(&mut self) -> (u64, Vec<SavedMoments>) {
        self.lru.clear();
        let saved = self
            .states
            .iter_mut()
            .map(|s| {
                s.moments = s.take().into_host();
                match &s.moments {
                    Moments::Host(saved) => saved.clone(),
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
            let blocks = s.numel.div_ceil(STATE_BLOCK);
            let fits = match (s.eight_bit, &moments) {
                (false, SavedMoments::F32 { m, v }) => m.len() == s.numel && v.len() == s.numel,
                (
                    true,
                    SavedMoments::U8 {
                        m_codes,
                        m_absmax,
                        v_codes,
                        v_absmax,
                    },
                ) => {
                    m_codes.len() == s.numel
                        && v_codes.len() == s.numel
                        && m_absmax.len() == blocks
                        && v_absmax.len() == blocks
                }
                _ => false,
            };
            match fits {
                true => s.moments = Moments::Host(moments),
                false => {
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
