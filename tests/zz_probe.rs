#[cfg(feature = "wgpu")]
#[test]
fn probe() {
    use burn::tensor::{DType, Device, DeviceKind, Tensor, TensorData};
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    for dt in [DType::F16, DType::BF16] {
        let r = std::panic::catch_unwind(|| {
            let x: Tensor<2> = Tensor::from_data(
                TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
                &device,
            );
            let y = x.clone().cast(dt);
            let z = y.clone().matmul(y.clone());
            let e = z.clone().exp().sum_dim(1);
            format!(
                "{:?} {:?} {:?}",
                z.dtype(),
                z.cast(DType::F32).into_data().to_vec::<f32>().unwrap(),
                e.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
            )
        });
        eprintln!("PROBE {dt:?}: {r:?}");
    }
}
