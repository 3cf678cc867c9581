//! The one ELF fact osvm needs: which program interpreter (loader) an executable names. The
//! image builder puts that loader into a guest image, and the agent names it when an exec fails
//! with "No such file or directory" although the program is there.

use std::path::PathBuf;

/// The program interpreter (PT_INTERP) a 64-bit little-endian ELF file names: `None` for a
/// static one; an error for anything else, or for headers that point outside the file.
pub fn interpreter(bytes: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    let field = |at: usize, len: usize| -> Result<u64, &'static str> {
        let b = bytes
            .get(at..at.checked_add(len).ok_or("truncated ELF headers")?)
            .ok_or("truncated ELF headers")?;
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    };
    let as_usize = |v: u64| usize::try_from(v).map_err(|_| "ELF offset out of range");
    let (phoff, phentsize, phnum) = (as_usize(field(32, 8)?)?, field(54, 2)?, field(56, 2)?);
    for i in 0..phnum {
        let at = phoff
            .checked_add(as_usize(i * phentsize)?)
            .ok_or("ELF offset out of range")?;
        if field(at, 4)? as u32 == PT_INTERP {
            let (offset, size) = (as_usize(field(at + 8, 8)?)?, as_usize(field(at + 32, 8)?)?);
            let name = bytes
                .get(offset..offset.checked_add(size).ok_or("ELF offset out of range")?)
                .ok_or("the ELF interpreter's name lies outside the file")?;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(PathBuf::from(
                String::from_utf8_lossy(name).into_owned(),
            )));
        }
    }
    Ok(None)
}
