//! Python's `repr(float)`, which bitsandbytes' quant-state JSON is written with.

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents -4..16,
/// scientific with a two-digit exponent otherwise (`1e-05`, `0.13119125366210938`, `2.0`).
pub fn python_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // The shortest round-trip digit count, then those digits correctly rounded: when two
    // shortest strings are equally close (a tie), Rust's shortest mode rounds up where Python
    // rounds half to even, as the exact mode does.
    let shortest = format!("{:e}", x.abs());
    let significant = shortest
        .split('e')
        .next()
        .expect("mantissa")
        .replace('.', "")
        .len();
    let sci = format!("{:.*e}", significant - 1, x.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("scientific format");
    let exponent: i32 = exponent.parse().expect("exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let mantissa = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The literals are exact decimal expansions of f32 values: a tie for 17 digits.
    #[allow(clippy::excessive_precision)]
    fn python_repr_matches_known_strings() {
        assert_eq!(
            python_float_repr(f64::from(0.13119125_f32)),
            "0.13119125366210938"
        );
        assert_eq!(
            python_float_repr(0.130374908447265625),
            "0.13037490844726562"
        );
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(2.5), "2.5");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(0.0001), "0.0001");
        assert_eq!(python_float_repr(1.5e-7), "1.5e-07");
        assert_eq!(python_float_repr(123456.0), "123456.0");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(-0.5), "-0.5");
        assert_eq!(python_float_repr(0.0), "0.0");
    }
}
