//! Minimal flattened device tree writer (no alloc): root, /chosen, /memory@X nodes.
const BEGIN: u32 = 1;
const END: u32 = 2;
const PROP: u32 = 3;
const FEND: u32 = 9;

#[repr(C, align(8))]
struct Buf([u8; 8192]);
static mut OUT: Buf = Buf([0; 8192]);

struct W {
    s: [u8; 4096],
    sl: usize,
    t: [u8; 512],
    tl: usize,
}
impl W {
    fn u32(&mut self, v: u32) {
        self.s[self.sl..self.sl + 4].copy_from_slice(&v.to_be_bytes());
        self.sl += 4;
    }
    fn bytes(&mut self, b: &[u8]) {
        self.s[self.sl..self.sl + b.len()].copy_from_slice(b);
        self.sl = (self.sl + b.len() + 3) & !3;
    }
    fn name_off(&mut self, n: &str) -> u32 {
        let o = self.tl;
        self.t[o..o + n.len()].copy_from_slice(n.as_bytes());
        self.tl += n.len() + 1;
        o as u32
    }
    fn begin(&mut self, name: &str) {
        self.u32(BEGIN);
        let mut b = [0u8; 64];
        b[..name.len()].copy_from_slice(name.as_bytes());
        self.bytes(&b[..name.len() + 1]);
    }
    fn prop(&mut self, name: &str, val: &[u8]) {
        let o = self.name_off(name);
        self.u32(PROP);
        self.u32(val.len() as u32);
        self.u32(o);
        self.bytes(val);
    }
    fn prop_str(&mut self, name: &str, v: &str) {
        let mut b = [0u8; 4096];
        b[..v.len()].copy_from_slice(v.as_bytes());
        self.prop(name, &b[..v.len() + 1]);
    }
    fn prop_u32(&mut self, name: &str, v: u32) {
        self.prop(name, &v.to_be_bytes());
    }
}

/// Builds the FDT in a static buffer, returns its address.
pub fn build(regions: &[(u64, u64)], bootargs: &str) -> u64 {
    let mut w = W {
        s: [0; 4096],
        sl: 0,
        t: [0; 512],
        tl: 0,
    };
    w.begin("");
    w.prop_u32("#address-cells", 2);
    w.prop_u32("#size-cells", 2);
    w.prop_str("compatible", "hermit,multiboot");
    w.begin("chosen");
    w.prop_str("bootargs", bootargs);
    w.u32(END);
    for &(base, len) in regions {
        let mut name = [0u8; 32];
        let n = fmt_name(&mut name, base);
        w.begin(core::str::from_utf8(&name[..n]).unwrap());
        w.prop_str("device_type", "memory");
        let mut reg = [0u8; 16];
        reg[..8].copy_from_slice(&base.to_be_bytes());
        reg[8..].copy_from_slice(&len.to_be_bytes());
        w.prop("reg", &reg);
        w.u32(END);
    }
    w.u32(END);
    w.u32(FEND);

    // SAFETY: OUT is this module's own static, borrowed once per build (which runs once).
    let out = unsafe { &mut (*core::ptr::addr_of_mut!(OUT)).0 };
    let off_rsv = 40usize;
    let off_struct = off_rsv + 16;
    let off_strings = off_struct + w.sl;
    let total = off_strings + w.tl;
    assert!(total <= out.len());
    let hdr = [
        0xd00d_feedu32,
        total as u32,
        off_struct as u32,
        off_strings as u32,
        off_rsv as u32,
        17,
        16,
        0,
        w.tl as u32,
        w.sl as u32,
    ];
    for (i, v) in hdr.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out[off_rsv..off_struct].fill(0);
    out[off_struct..off_strings].copy_from_slice(&w.s[..w.sl]);
    out[off_strings..total].copy_from_slice(&w.t[..w.tl]);
    out.as_ptr() as u64
}

fn fmt_name(buf: &mut [u8], base: u64) -> usize {
    let p = b"memory@";
    buf[..p.len()].copy_from_slice(p);
    let mut n = p.len();
    let mut started = false;
    for i in (0..16).rev() {
        let d = ((base >> (i * 4)) & 0xf) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            buf[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n += 1;
        }
    }
    n
}
