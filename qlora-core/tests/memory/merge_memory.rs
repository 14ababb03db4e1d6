//! Merging a generated ~100M-parameter model works weight by weight: the peak heap stays under
//! 1.5x one output shard plus one layer's dense weights.

use qlora_core::FloatDtype;
use qlora_core::lora::{AdapterDtype, LoraConfig, save_adapter};
use qlora_core::merge::{MergeBase, MergeOptions, merge_model};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use support::alloc::{mib, peak_during};
use support::synthetic::SyntheticModel;

#[test]
fn merging_stays_near_one_shard_and_one_layer() {
    let _alone = support::alloc::alone();
    let shape = SyntheticModel {
        vocab_size: 16000,
        hidden_size: 768,
        intermediate_size: 2048,
        num_layers: 12,
        num_heads: 12,
        num_kv_heads: 4,
        tie_word_embeddings: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    shape.write(&base, 3).unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    {
        let mut model = CausalLm::load(
            &base,
            &LoadOptions {
                bits: Bits::Sixteen,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let config = LoraConfig {
            r: 16,
            ..LoraConfig::default()
        };
        model.attach_lora(&config, 1).unwrap();
        save_adapter(&model, &adapter, &config, "synthetic", AdapterDtype::F32).unwrap();
    }
    let shard = 50_000_000;
    let options = MergeOptions {
        base: Some(MergeBase::Original),
        dtype: Some(FloatDtype::BF16),
        quantize_nf4: false,
        max_shard_bytes: shard,
        overwrite: false,
    };
    let (report, peak) =
        peak_during(|| merge_model(&base, &adapter, &dir.path().join("merged"), &options).unwrap());
    let layer_dense = 4 * shape.layer_linear_params();
    let bound = shard * 3 / 2 + layer_dense;
    eprintln!(
        "{} parameters, {} adapters merged: peak heap {:.1} MiB, bound 1.5 x shard ({:.0} MiB) + one layer dense ({:.1} MiB) = {:.1} MiB",
        shape.parameters(),
        report.merged,
        mib(peak),
        mib(shard),
        mib(layer_dense),
        mib(bound)
    );
    assert_eq!(report.merged, 84);
    assert!(peak <= bound, "peak {peak} > bound {bound}");
}
