// Multiboot v1 header + 32-bit entry that switches to long mode.
.section .mboot, "a"
.align 4
    .4byte 0x1BADB002
    .4byte 0x00000003
    .4byte -(0x1BADB002 + 0x00000003)

.section .text.entry32, "ax"
.code32
.global _start
_start:
    cli
    mov dword ptr [mb_magic], eax
    mov dword ptr [mb_info_ptr], ebx
    mov esp, OFFSET boot_stack_top32

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB identity (first 1 GiB)
    mov eax, OFFSET early_pdpt
    or eax, 3
    mov dword ptr [early_pml4], eax
    mov eax, OFFSET early_pd
    or eax, 3
    mov dword ptr [early_pdpt], eax
    mov ecx, 0
1:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [early_pd + ecx*8], eax
    mov dword ptr [early_pd + ecx*8 + 4], 0
    inc ecx
    cmp ecx, 512
    jb 1b

    mov eax, OFFSET early_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, (1 << 5)            // PAE
    mov cr4, eax
    mov ecx, 0xC0000080         // EFER
    rdmsr
    or eax, (1 << 8)            // LME
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | (1 << 1)
    and eax, ~((1 << 2) | (1 << 30) | (1 << 29))
    mov cr0, eax

    lgdt [gdt_ptr]
    .att_syntax prefix
    ljmp $0x08, $start64
    .intel_syntax noprefix

.code64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor ax, ax
    mov fs, ax
    mov gs, ax
    movabs rsp, OFFSET boot_stack_top
    mov edi, dword ptr [mb_magic]
    mov esi, dword ptr [mb_info_ptr]
    call {loader_main}
2:  hlt
    jmp 2b

.section .data.boot, "aw"
.align 16
gdt:
    .8byte 0
    .8byte 0x00af9a000000ffff
    .8byte 0x00cf92000000ffff
gdt_end:
gdt_ptr:
    .2byte gdt_end - gdt - 1
    .4byte gdt
.align 4
mb_magic: .4byte 0
mb_info_ptr: .4byte 0

.section .bss.boot, "aw", @nobits
.align 4096
early_pml4: .skip 4096
early_pdpt: .skip 4096
early_pd:   .skip 4096
.align 16
boot_stack32: .skip 1024
boot_stack_top32:
boot_stack: .skip 0x10000
boot_stack_top:
