//! osvm's Hermit loader: QEMU boots it by multiboot with a Hermit app as the module; it writes
//! the device tree and boot info kernel 0.11 expects, loads the app's kernel image with
//! `hermit-entry` and jumps to it. See docs/unikernel.md.
//!
//! It runs alone on the (virtual) machine, in long mode with the first GiB identity-mapped by
//! `entry.s`, single-threaded and without interrupts: every pointer it dereferences is a
//! physical address the multiboot loader (QEMU) handed over or one of its own statics, and no
//! one else touches memory meanwhile. The `SAFETY:` comments below rest on that.

#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]
// entry.s switches to AT&T syntax for the one far jump into long mode, which LLVM's assembler
// accepts only in that syntax, and back.
#![allow(bad_asm_style)]

extern crate alloc;

mod fdt;

use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::mem::MaybeUninit;
use core::num::NonZeroU64;

use hermit_entry::boot_info::{BootInfo, HardwareInfo, PlatformInfo, RawBootInfo, SerialPortBase};
use hermit_entry::elf::KernelObject;

global_asm!(include_str!("entry.s"), loader_main = sym loader_main);

const SERIAL: u16 = 0x3f8;
const KERNEL_STACK_SIZE: usize = 0x8000; // hermit-kernel 0.11 config.rs
const MB_MAGIC: u32 = 0x2BAD_B002;

// ---------- serial ----------
/// Writes `v` to I/O port `port`.
///
/// # Safety
/// The port must be one whose write has no effect on memory (the UART, QEMU's debug exit).
unsafe fn outb(port: u16, v: u8) {
    // SAFETY: a port write, harmless by the caller's contract; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v) }
}
/// Reads I/O port `port`.
///
/// # Safety
/// The port must be one whose read has no side effect on memory (the UART's status).
unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: a port read, harmless by the caller's contract; no memory is touched.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port) };
    v
}
struct Serial;
impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: the 16550 UART's line status register and data register.
            unsafe {
                while inb(SERIAL + 5) & 0x20 == 0 {}
                outb(SERIAL, b);
            }
        }
        Ok(())
    }
}
macro_rules! println { ($($t:tt)*) => {{ let _ = writeln!(Serial, $($t)*); }} }

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("[loader] PANIC: {info}");
    // SAFETY: QEMU's isa-debug-exit port: QEMU exits with code 33 (the kernel uses 3 for
    // success and 1 for failure).
    unsafe { outb(0xf4, 0x10) };
    loop {
        // SAFETY: stops the CPU with interrupts off; nothing follows.
        unsafe { asm!("cli; hlt") }
    }
}

// ---------- tiny bump allocator (hermit-entry's loader deps link `alloc`) ----------
struct Bump;
static mut HEAP: [u8; 64 * 1024] = [0; 64 * 1024];
static mut HEAP_POS: usize = 0;
// SAFETY: `alloc` returns either null or a block of `HEAP` that is aligned as asked, lies
// wholly inside the heap, and overlaps no block handed out before (the position only grows);
// the loader is single-threaded, so the unsynchronized statics are never raced.
unsafe impl core::alloc::GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: core::alloc::Layout) -> *mut u8 {
        // SAFETY: single-threaded use of HEAP_POS and the address of HEAP (see the impl).
        unsafe {
            let base = core::ptr::addr_of_mut!(HEAP) as *mut u8 as usize;
            let start = (base + HEAP_POS + l.align() - 1) & !(l.align() - 1);
            if start + l.size() > base + 64 * 1024 {
                return core::ptr::null_mut();
            }
            HEAP_POS = start + l.size() - base;
            start as *mut u8
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}
#[global_allocator]
static ALLOC: Bump = Bump;

// ---------- statics handed to the kernel ----------
#[repr(C, align(4096))]
struct Table([u64; 512]);
static mut PML4: Table = Table([0; 512]);
static mut PDPT: Table = Table([0; 512]);
static mut PD: Table = Table([0; 512]);
static mut PT0: Table = Table([0; 512]);
#[repr(C, align(4096))]
struct Stack([u8; KERNEL_STACK_SIZE]);
static mut KSTACK: Stack = Stack([0; KERNEL_STACK_SIZE]);
static mut CMDLINE: [u8; 4096] = [0; 4096];
static mut RAW_BOOT_INFO: MaybeUninit<RawBootInfo> = MaybeUninit::uninit();

unsafe extern "C" {
    static loader_start: u8;
    static loader_end: u8;
}

/// Reads the 32-bit value at physical address `addr`.
///
/// # Safety
/// `addr..addr + 4` must be identity-mapped memory the boot loader handed over.
unsafe fn rd32(addr: u64) -> u32 {
    // SAFETY: readable by the caller's contract; unaligned reads are allowed.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}
/// Reads the 64-bit value at physical address `addr`.
///
/// # Safety
/// As for [`rd32`], eight bytes.
unsafe fn rd64(addr: u64) -> u64 {
    // SAFETY: readable by the caller's contract; unaligned reads are allowed.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// The 32-bit field at `offset` of the multiboot information structure at `mbi`.
fn mbi32(mbi: u64, offset: u64) -> u32 {
    debug_assert!(offset + 4 <= 88);
    // SAFETY: QEMU's multiboot loader put the 88-byte information structure at `mbi`, in the
    // identity-mapped first GiB, and the offsets used are those of the Multiboot 1 spec.
    unsafe { rd32(mbi + offset) }
}

const P: u64 = 1;
const W: u64 = 2;
const PS: u64 = 0x80;
const MIB2: u64 = 2 * 1024 * 1024;

extern "C" fn loader_main(magic: u32, mbi: u32) -> ! {
    println!("[loader] osvm hermit loader, multiboot magic {magic:#x} info {mbi:#x}");
    assert_eq!(magic, MB_MAGIC, "not booted by a multiboot loader");
    let mbi = mbi as u64;
    let mut highest_used = core::ptr::addr_of!(loader_end) as u64;
    highest_used = highest_used.max(mbi + 88);
    let flags = mbi32(mbi, 0);

    // command line (QEMU: "<kernel path> <-append>")
    let mut cmdline: Option<&'static str> = None;
    if flags & (1 << 2) != 0 {
        let p = mbi32(mbi, 16) as u64;
        let mut n = 0usize;
        // SAFETY: `p` is the NUL-terminated command line the multiboot loader wrote (flag bit
        // 2), read up to its NUL or the buffer's end; CMDLINE is this loader's own static,
        // borrowed once.
        unsafe {
            let buf = &mut *core::ptr::addr_of_mut!(CMDLINE);
            while n < buf.len() - 1 && *((p + n as u64) as *const u8) != 0 {
                buf[n] = *((p + n as u64) as *const u8);
                n += 1;
            }
            highest_used = highest_used.max(p + n as u64 + 1);
            cmdline = core::str::from_utf8(&buf[..n]).ok();
        }
    }
    println!("[loader] cmdline: {:?}", cmdline);

    // first module = kernel/app ELF
    assert!(
        flags & (1 << 3) != 0 && mbi32(mbi, 20) > 0,
        "no multiboot module (-initrd)"
    );
    let mods = mbi32(mbi, 24) as u64;
    let count = mbi32(mbi, 20) as u64;
    // SAFETY: `mods` points to `count` 16-byte module entries (start, end, string, reserved),
    // written by the multiboot loader (flag bit 3).
    let (ms, me) = unsafe { (rd32(mods) as u64, rd32(mods + 4) as u64) };
    for i in 0..count {
        // SAFETY: entry `i` of the same array.
        highest_used = highest_used.max(unsafe { rd32(mods + 16 * i + 4) } as u64);
    }
    println!("[loader] module at {ms:#x}..{me:#x}");
    // SAFETY: the first module (the app's ELF) occupies `ms..me`, loaded by the multiboot
    // loader and read-only from here on.
    let elf = unsafe { core::slice::from_raw_parts(ms as *const u8, (me - ms) as usize) };

    // memory map -> FDT /memory nodes
    assert!(flags & (1 << 6) != 0, "no multiboot memory map");
    let (mlen, maddr) = (mbi32(mbi, 44) as u64, mbi32(mbi, 48) as u64);
    let mut regions = [(0u64, 0u64); 16];
    let mut nreg = 0;
    let mut off = 0;
    while off < mlen && nreg < regions.len() {
        let e = maddr + off;
        // SAFETY: `e` is an entry of the memory map at `maddr..maddr + mlen` (flag bit 6):
        // size, then base, length and type at offsets 4, 12 and 20.
        let (size, base, len, typ) =
            unsafe { (rd32(e) as u64, rd64(e + 4), rd64(e + 12), rd32(e + 20)) };
        println!("[loader] mmap {base:#x} len {len:#x} type {typ}");
        if typ == 1 && len > 0 {
            regions[nreg] = (base, len);
            nreg += 1;
        }
        off += size + 4;
    }

    // parse + load the kernel at a 2 MiB aligned address above everything in use
    let obj = KernelObject::parse(elf).expect("invalid hermit kernel ELF");
    let mem_size = obj.mem_size();
    let start = obj
        .start_addr()
        .unwrap_or_else(|| (highest_used + MIB2 - 1) & !(MIB2 - 1));
    assert!(
        start.is_multiple_of(MIB2) && start >= highest_used,
        "kernel start {start:#x} unusable"
    );
    println!(
        "[loader] hermit version {:?}, mem_size {mem_size:#x}, loading at {start:#x}",
        obj.hermit_version()
    );
    // SAFETY: `start..start + mem_size` lies above the loader, the boot information and every
    // module (`highest_used`) in identity-mapped memory nothing else uses; it is handed to the
    // kernel's loader as uninitialized bytes.
    let mem = unsafe { core::slice::from_raw_parts_mut(start as *mut MaybeUninit<u8>, mem_size) };
    let loaded = obj.load_kernel(mem, start);
    let kend = start + mem_size as u64;
    println!(
        "[loader] entry {:#x}, tls {:?}",
        loaded.entry_point, loaded.load_info.tls_info
    );

    // final page tables: 4 KiB identity pages for the loader image, 2 MiB pages for the kernel
    // SAFETY: the tables are this loader's own statics, each borrowed once here; nothing else
    // uses them until CR3 points to them below.
    unsafe {
        let pml4 = &mut *core::ptr::addr_of_mut!(PML4);
        let pdpt = &mut *core::ptr::addr_of_mut!(PDPT);
        let pd = &mut *core::ptr::addr_of_mut!(PD);
        let pt0 = &mut *core::ptr::addr_of_mut!(PT0);
        pml4.0[0] = pdpt as *mut _ as u64 | P | W;
        pdpt.0[0] = pd as *mut _ as u64 | P | W;
        pd.0[0] = pt0 as *mut _ as u64 | P | W;
        let ls = core::ptr::addr_of!(loader_start) as u64;
        let le = core::ptr::addr_of!(loader_end) as u64;
        assert!(le <= MIB2, "loader image must stay below 2 MiB");
        let mut a = ls & !0xfff;
        while a < le {
            pt0.0[(a >> 12) as usize] = a | P | W;
            a += 0x1000;
        }
        assert!(kend <= 1 << 30, "kernel must fit in the first GiB");
        let mut k = start;
        while k < kend {
            pd.0[(k / MIB2) as usize] = k | P | W | PS;
            k += MIB2;
        }
    }

    // device tree: memory + chosen/bootargs
    let fdt_addr = fdt::build(&regions[..nreg], cmdline.unwrap_or(""));

    let boot_info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: 0..0,
            serial_port_base: SerialPortBase::new(SERIAL),
            device_tree: NonZeroU64::new(fdt_addr),
        },
        load_info: loaded.load_info,
        platform_info: PlatformInfo::Multiboot {
            command_line: cmdline,
            multiboot_info_addr: NonZeroU64::new(mbi).unwrap(),
        },
    };
    // SAFETY: RAW_BOOT_INFO is this loader's own static, borrowed once, written once.
    let raw = unsafe {
        let p = &mut *core::ptr::addr_of_mut!(RAW_BOOT_INFO);
        p.write(RawBootInfo::from(boot_info)) as *const RawBootInfo
    };
    let stack = core::ptr::addr_of_mut!(KSTACK) as u64;
    println!("[loader] jumping to kernel, boot info {raw:p}, stack {stack:#x}, fdt {fdt_addr:#x}");
    // SAFETY: the new tables map the loader (this code) and the kernel identically; the kernel's
    // stack is this loader's own static and its entry point was set by `load_kernel`. Control
    // never comes back.
    unsafe {
        let cr3 = core::ptr::addr_of!(PML4) as u64;
        asm!(
            "mov cr3, {cr3}",
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "jmp {entry}",
            cr3 = in(reg) cr3,
            stack = in(reg) stack,
            entry = in(reg) loaded.entry_point,
            in("rdi") raw,
            in("esi") 0u32,
            options(noreturn)
        )
    }
}
