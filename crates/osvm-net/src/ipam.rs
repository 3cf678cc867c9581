//! Address blocks for components: one /30 each out of a pool, recorded durably.
//!
//! Block `n` of pool `P` is `P + 4n`: `.1` is the hub's end of the veth, `.2` the component's.
//! The record is a small JSON file replaced atomically (write, fsync, rename), so a crash leaves
//! the old record or the new one, never a mix. Released blocks are reused lowest first; a key
//! that has a block gets the same one back.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NetError;

/// The default pool: 10.213.0.0/16, 16,384 components.
pub const DEFAULT_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 0, 0), 16);

/// One component's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Index of the block in the pool.
    pub index: u32,
    /// The network address.
    pub network: Ipv4Addr,
}

impl Block {
    /// The hub's end of the veth (`.1`).
    pub fn hub_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The component's address (`.2`).
    pub fn component_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    pool: String,
    blocks: BTreeMap<String, u32>,
}

/// The allocator, bound to its record file.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    pool: Ipv4Addr,
    capacity: u32,
    record: Record,
}

impl Ipam {
    /// Opens (or starts) the record at `path` for the pool `network/prefix` (prefix at most 30).
    pub fn open(path: &Path, network: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        let store = |detail: String| NetError::Store {
            path: path.display().to_string(),
            detail,
        };
        let pool_text = format!("{network}/{prefix}");
        let record = match fs::read_to_string(path) {
            Ok(text) => {
                let record: Record =
                    serde_json::from_str(&text).map_err(|e| store(e.to_string()))?;
                if record.pool != pool_text {
                    return Err(store(format!(
                        "records pool {}, asked for {pool_text}",
                        record.pool
                    )));
                }
                record
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record {
                pool: pool_text,
                blocks: BTreeMap::new(),
            },
            Err(e) => return Err(store(e.to_string())),
        };
        let capacity = if prefix > 30 {
            0
        } else {
            1u32 << (30 - prefix)
        };
        Ok(Self {
            path: path.to_path_buf(),
            pool: network,
            capacity,
            record,
        })
    }

    fn block(&self, index: u32) -> Block {
        Block {
            index,
            network: Ipv4Addr::from(u32::from(self.pool) + 4 * index),
        }
    }

    /// The block of `key` (`stack/component`), allocating the lowest free one if it has none.
    pub fn allocate(&mut self, key: &str) -> Result<Block, NetError> {
        if let Some(&index) = self.record.blocks.get(key) {
            return Ok(self.block(index));
        }
        let used: std::collections::BTreeSet<u32> = self.record.blocks.values().copied().collect();
        let index = (0..self.capacity)
            .find(|i| !used.contains(i))
            .ok_or_else(|| NetError::Exhausted(self.record.pool.clone()))?;
        self.record.blocks.insert(key.to_owned(), index);
        self.save()?;
        Ok(self.block(index))
    }

    /// The block of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<Block> {
        self.record.blocks.get(key).map(|&i| self.block(i))
    }

    /// Gives `key`'s block back to the pool.
    pub fn release(&mut self, key: &str) -> Result<(), NetError> {
        if self.record.blocks.remove(key).is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// Exchanges the blocks of keys `a` and `b` (both must have one), in one durable write: a
    /// hot-swap's new instance becomes the component's own.
    pub fn swap_keys(&mut self, a: &str, b: &str) -> Result<(), NetError> {
        let (Some(&ia), Some(&ib)) = (self.record.blocks.get(a), self.record.blocks.get(b)) else {
            return Err(NetError::Store {
                path: self.path.display().to_string(),
                detail: format!("cannot exchange the blocks of {a} and {b}: one has none"),
            });
        };
        self.record.blocks.insert(a.to_owned(), ib);
        self.record.blocks.insert(b.to_owned(), ia);
        self.save()
    }

    /// Every allocation, by key.
    pub fn all(&self) -> Vec<(String, Block)> {
        self.record
            .blocks
            .iter()
            .map(|(k, &i)| (k.clone(), self.block(i)))
            .collect()
    }

    fn save(&self) -> Result<(), NetError> {
        let store = |detail: String| NetError::Store {
            path: self.path.display().to_string(),
            detail,
        };
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&self.record).map_err(|e| store(e.to_string()))?;
        let mut f = fs::File::create(&tmp).map_err(|e| store(e.to_string()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| store(e.to_string()))?;
        fs::rename(&tmp, &self.path).map_err(|e| store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("osvm-ipam-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn blocks_are_unique_durable_and_reused_after_release() {
        let dir = temp("durable");
        let path = dir.join("ipam.json");
        let pool = Ipv4Addr::new(10, 213, 0, 0);
        let mut ipam = Ipam::open(&path, pool, 16).unwrap();
        let a = ipam.allocate("s/a").unwrap();
        let b = ipam.allocate("s/b").unwrap();
        assert_eq!(a.network, Ipv4Addr::new(10, 213, 0, 0));
        assert_eq!(a.hub_addr(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(a.component_addr(), Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(b.network, Ipv4Addr::new(10, 213, 0, 4));
        assert_eq!(ipam.allocate("s/a").unwrap(), a, "same key, same block");

        // Another process (a restarted daemon) sees the same record.
        let mut again = Ipam::open(&path, pool, 16).unwrap();
        assert_eq!(again.get("s/b"), Some(b));
        again.release("s/a").unwrap();
        let c = again.allocate("s/c").unwrap();
        assert_eq!(c, a, "the lowest free block is reused");
        let all = Ipam::open(&path, pool, 16).unwrap().all();
        let mut nets: Vec<_> = all.iter().map(|(_, b)| b.network).collect();
        nets.dedup();
        assert_eq!(nets.len(), all.len(), "never duplicated: {all:?}");

        let mut swapping = Ipam::open(&path, pool, 16).unwrap();
        let (before_b, before_c) = (swapping.get("s/b"), swapping.get("s/c"));
        swapping.swap_keys("s/b", "s/c").unwrap();
        let again = Ipam::open(&path, pool, 16).unwrap();
        assert_eq!((again.get("s/b"), again.get("s/c")), (before_c, before_b));
        assert!(swapping.swap_keys("s/b", "s/none").is_err());
        assert!(
            Ipam::open(&path, Ipv4Addr::new(10, 9, 0, 0), 16).is_err(),
            "a record of another pool is refused, not reinterpreted"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_pool_says_so() {
        let dir = temp("full");
        let mut ipam = Ipam::open(&dir.join("ipam.json"), Ipv4Addr::new(10, 0, 0, 0), 29).unwrap();
        ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        let err = ipam.allocate("c").unwrap_err();
        assert!(err.to_string().contains("no free address block"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
