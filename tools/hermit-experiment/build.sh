#!/bin/sh
# Issue 9 groundwork: builds hermit-kernel 0.11.0 (crates.io) for x86_64-unknown-none, post-processes
# its archive like the kernel's own xtask (strip the bitcode sections, prefix every global symbol
# but the entry points and sys_* with `hermit`), builds the hello app for x86_64-unknown-hermit
# against it, builds osvm's loader (crates/osvm-hermit-loader) and boots both under QEMU TCG.
# Worked end to end on rustc 1.95.0: "Hello from a Hermit app!", args, env, maths, a thread,
# /tmp, then `exit status 7`, ~0.33 s start to exit. Needs rust-src and the x86_64-unknown-none
# target (rustup), binutils, qemu-system-x86. Work files go to $HERMIT_LAB (default
# /tmp/hermit-lab). Not part of the tests yet: osvm-unikernel will do these steps.
set -eu
REPO=$(cd "$(dirname "$0")/../.." && pwd)
LAB=${HERMIT_LAB:-/tmp/hermit-lab}
mkdir -p "$LAB"
REG=$(ls -d ~/.cargo/registry/src/*/ | head -1)
if [ ! -d "$REG/hermit-kernel-0.11.0" ]; then
  mkdir -p "$LAB/fetch/src" && echo 'fn main() {}' > "$LAB/fetch/src/main.rs"
  printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2024"\n[dependencies]\nhermit-kernel = "=0.11.0"\n[workspace]\n' > "$LAB/fetch/Cargo.toml"
  (cd "$LAB/fetch" && cargo fetch)
fi
# 1a. the kernel: drop its nightly pin; `#[naked]` is `#[unsafe(naked)]` on current rustc.
[ -d "$LAB/kernel" ] || { cp -r "$REG/hermit-kernel-0.11.0" "$LAB/kernel"; rm "$LAB/kernel/rust-toolchain.toml"
  sed -i 's/^#\[naked\]/#[unsafe(naked)]/' "$LAB"/kernel/src/arch/x86_64/kernel/*.rs "$LAB/kernel/src/syscalls/table.rs"; }
(cd "$LAB/kernel" && RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Zmutable-noalias=no cargo build --release \
  --target x86_64-unknown-none --no-default-features --features pci,acpi,fsgsbase,tcp,dhcpv4)
# 1b. the archive's post-processing.
mkdir -p "$LAB/dist" && cp "$LAB/kernel/target/x86_64-unknown-none/release/libhermit.a" "$LAB/dist/"
cd "$LAB/dist"
objcopy --remove-section=.llvmbc --remove-section=.llvmcmd libhermit.a
nm -g --defined-only libhermit.a | awk 'NF==3{print $3}' | sort -u > syms.txt
grep -vE '^(_start|__bss_start|mcount|runtime_entry|sys_.*)$' syms.txt | awk '{ if (substr($1,1,3)=="_ZN") print $1" _ZN6hermit"substr($1,4); else print $1" hermit_"$1 }' > redefine.txt
objcopy --redefine-syms=redefine.txt libhermit.a
# 1c. the app.
(cd "$REPO/tools/hermit-experiment/app" && HERMIT_DIST="$LAB/dist" CARGO_TARGET_DIR="$LAB/app-target" \
  RUSTC_BOOTSTRAP=1 cargo build --release --target x86_64-unknown-hermit \
  -Zbuild-std=std,panic_abort -Zbuild-std-features=compiler-builtins-mem)
cp "$LAB/app-target/x86_64-unknown-hermit/release/hello" "$LAB/hello.elf"
# 2. the loader (QEMU's multiboot refuses ELF64: converted to ELF32).
(cd "$REPO/crates/osvm-hermit-loader" && CARGO_TARGET_DIR="$LAB/loader-target" cargo build --release)
objcopy -O elf32-i386 "$LAB/loader-target/x86_64-unknown-none/release/osvm-hermit-loader" "$LAB/loader32.elf"
# 3. boot.
qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 128M -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  -display none -serial stdio -no-reboot -kernel "$LAB/loader32.elf" -initrd "$LAB/hello.elf" \
  -append "env=FOO=bar -- arg1" || true
