use std::hint::black_box;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let x: f64 = black_box(2.0);
    println!("Hello from a Hermit app! args={args:?} FOO={:?}", std::env::var("FOO"));
    println!("sin(2)={:.4} exp(1)={:.4} pow={:.4}", x.sin(), black_box(1f64).exp(), x.powf(black_box(0.5)));
    println!("more: {:.4} {:.4} {:.4} {:.4} {:.4} {:.4} {:.4} {:.4}", x.cbrt(), x.hypot(x), x.tanh(), x.atan2(x), x.ln_1p(), x.exp_m1(), x.asinh(), x.sinh()+x.cosh()+x.tan()+x.acos().abs()+x.ln()+x.log10()+x.log2());
    let t = std::thread::spawn(|| 40 + 2);
    println!("thread returned {}", t.join().unwrap());
    std::fs::write("/tmp/f", b"tmpfs ok").unwrap();
    println!("{}", std::fs::read_to_string("/tmp/f").unwrap());
    std::process::exit(7);
}
