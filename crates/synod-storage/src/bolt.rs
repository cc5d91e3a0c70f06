//! bbolt database files, written whole and read back: the container of the snapshots
//! `Maintenance.Snapshot` streams, so that etcd's tools (`etcdctl snapshot status`,
//! `etcdctl snapshot restore`) read Synod's snapshots as they read etcd's.
//!
//! Only what a one-shot file needs is here: [`BoltBuilder`] lays out a database of
//! top-level buckets in one pass (no transactions, no free pages), and [`BoltFile`] reads
//! one (including the inline buckets bbolt itself writes) from bytes in memory, checking
//! every offset, so a corrupt or foreign file is an error, never a panic. No crate reads
//! or writes bbolt's format (the Rust ports are their own formats), hence this module.
//!
//! The format (bbolt 1.3, go.etcd.io/bbolt, little endian):
//!
//! | page | contents |
//! |---|---|
//! | 0, 1 | meta: magic `0xED0CDAED`, version 2, page size, flags, root bucket (root page, sequence), freelist page, high-water page, txid, FNV-1a 64 checksum of the preceding 56 bytes |
//! | 2 | freelist: the free page ids (none in a file written whole) |
//! | 3 … | the buckets' B+trees: leaf pages of 16-byte elements (flags, pos, key size, value size) then keys and values; branch pages of 16-byte elements (pos, key size, child page); a node larger than a page continues on `overflow` following pages |
//!
//! Every page starts with a 16-byte header: id (u64), flags (u16), element count (u16),
//! overflow pages (u32). An element's `pos` is the distance from the element to its key;
//! the value follows the key. A leaf element flagged `0x01` is a sub-bucket whose value is
//! its root page and sequence (root 0: an inline bucket, its page following in the value).

use std::collections::HashSet;
use std::fmt;

/// The page size of the files [`BoltBuilder`] writes (bbolt's default on Linux x86-64).
pub const PAGE_SIZE: usize = 4096;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_CHECKSUMMED: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;

/// Deeper trees than this are corrupt: a tree of 4 KiB pages holding every 64-bit page id
/// is far shallower.
const MAX_DEPTH: usize = 64;

/// Why bytes are not a readable bbolt database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoltError {
    /// Neither meta page holds bbolt's magic number: not a bbolt file at all.
    NotBolt,
    /// A meta page names a format version this module does not read.
    UnsupportedVersion(u32),
    /// The file claims to be bbolt but cannot be read: what and where.
    Corrupt(String),
}

impl fmt::Display for BoltError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoltError::NotBolt => write!(f, "not a bbolt database (no valid meta page)"),
            BoltError::UnsupportedVersion(version) => {
                write!(
                    f,
                    "bbolt format version {version} is not read (only {VERSION})"
                )
            }
            BoltError::Corrupt(why) => write!(f, "corrupt bbolt database: {why}"),
        }
    }
}

impl std::error::Error for BoltError {}

fn corrupt(why: impl Into<String>) -> BoltError {
    BoltError::Corrupt(why.into())
}

/// bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A database of top-level buckets, built in memory and written in one pass.
///
/// ```
/// use synod_storage::bolt::{BoltBuilder, BoltFile};
/// let mut builder = BoltBuilder::new();
/// builder.bucket(b"meta", vec![(b"k".to_vec(), b"v".to_vec())]);
/// let file = builder.finish();
/// let read = BoltFile::open(&file).unwrap();
/// assert_eq!(read.get(b"meta", b"k").unwrap(), Some(&b"v"[..]));
/// ```
#[derive(Debug, Default)]
pub struct BoltBuilder {
    buckets: Vec<(Vec<u8>, Entries)>,
}

/// A bucket's keys and values.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One leaf or branch element while a tree is laid out.
struct Element<'a> {
    key: &'a [u8],
    value: &'a [u8],
    flags: u32,
    child: u64,
}

impl BoltBuilder {
    pub fn new() -> BoltBuilder {
        BoltBuilder::default()
    }

    /// Adds (or replaces) the bucket `name` with `entries`, which are sorted here; of two
    /// entries with one key the later is kept, as a second put would.
    pub fn bucket(&mut self, name: &[u8], mut entries: Entries) -> &mut Self {
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        self.buckets.retain(|(existing, _)| existing != name);
        self.buckets.push((name.to_vec(), entries));
        self
    }

    /// The database file: pages 0 and 1 meta, 2 an empty freelist, then every bucket's
    /// tree and the root bucket's. Its length is a whole number of pages.
    ///
    /// Memory: the file is allocated once at about its final size (leaves are filled to a
    /// page, so it is the entries' bytes plus a little), and each bucket's entries are
    /// freed as soon as its tree is written, so the peak is about the entries plus the
    /// file rather than the several copies a growing buffer would make.
    pub fn finish(mut self) -> Vec<u8> {
        self.buckets.sort_by(|a, b| a.0.cmp(&b.0));
        let entry_bytes: usize = self
            .buckets
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .map(|(key, value)| ELEMENT + key.len() + value.len())
            .sum();
        // Leaves waste at most the room an element did not fit in; branches add ~1 %.
        let estimate = 3 * PAGE_SIZE + entry_bytes + entry_bytes / 4 + 64 * PAGE_SIZE;
        let mut file = Vec::with_capacity(estimate);
        file.resize(3 * PAGE_SIZE, 0);
        write_header(&mut file, 2, FREELIST_PAGE, 0, 0);
        let mut roots = Vec::with_capacity(self.buckets.len());
        for (_, entries) in &mut self.buckets {
            let elements = entries
                .iter()
                .map(|(key, value)| Element {
                    key,
                    value,
                    flags: 0,
                    child: 0,
                })
                .collect();
            roots.push(write_tree(&mut file, elements));
            *entries = Entries::new();
        }
        let headers: Vec<[u8; BUCKET_HEADER]> = roots
            .iter()
            .map(|&root| {
                let mut header = [0u8; BUCKET_HEADER];
                header[..8].copy_from_slice(&root.to_le_bytes());
                header
            })
            .collect();
        let elements = self
            .buckets
            .iter()
            .zip(&headers)
            .map(|((name, _), header)| Element {
                key: name,
                value: header,
                flags: BUCKET_LEAF,
                child: 0,
            })
            .collect();
        let root = write_tree(&mut file, elements);
        let high_water = (file.len() / PAGE_SIZE) as u64;
        for (page, txid) in [(0u64, 1u64), (1, 2)] {
            write_meta(&mut file, page, root, high_water, txid);
        }
        file
    }
}

fn put_u16(file: &mut [u8], at: usize, value: u16) {
    file[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(file: &mut [u8], at: usize, value: u32) {
    file[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(file: &mut [u8], at: usize, value: u64) {
    file[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn write_header(file: &mut [u8], page: u64, flags: u16, count: u16, overflow: u32) {
    let at = page as usize * PAGE_SIZE;
    put_u64(file, at, page);
    put_u16(file, at + 8, flags);
    put_u16(file, at + 10, count);
    put_u32(file, at + 12, overflow);
}

fn write_meta(file: &mut [u8], page: u64, root: u64, high_water: u64, txid: u64) {
    write_header(file, page, META_PAGE, 0, 0);
    let at = page as usize * PAGE_SIZE + PAGE_HEADER;
    put_u32(file, at, MAGIC);
    put_u32(file, at + 4, VERSION);
    put_u32(file, at + 8, PAGE_SIZE as u32);
    put_u32(file, at + 12, 0);
    put_u64(file, at + 16, root);
    put_u64(file, at + 24, 0);
    put_u64(file, at + 32, 2);
    put_u64(file, at + 40, high_water);
    put_u64(file, at + 48, txid);
    let checksum = fnv1a64(&file[at..at + META_CHECKSUMMED]);
    put_u64(file, at + META_CHECKSUMMED, checksum);
}

/// Writes a B+tree of `elements` (sorted by key) at the end of `file`, leaves first, and
/// returns its root page. Nodes are filled up to a page; an element alone larger than a
/// page gets a node of its own that overflows onto as many pages as it needs.
fn write_tree(file: &mut Vec<u8>, elements: Vec<Element<'_>>) -> u64 {
    let mut level = elements;
    let mut leaf = true;
    loop {
        let mut parents = Vec::new();
        let mut start = 0;
        loop {
            let mut end = start;
            let mut size = PAGE_HEADER;
            while end < level.len() {
                let element = &level[end];
                let grown =
                    size + ELEMENT + element.key.len() + if leaf { element.value.len() } else { 0 };
                if end > start && grown > PAGE_SIZE {
                    break;
                }
                size = grown;
                end += 1;
            }
            let page = write_node(file, &level[start..end], leaf, size);
            let first_key: &[u8] = level.get(start).map_or(&[], |element| element.key);
            parents.push((first_key, page));
            start = end;
            if start >= level.len() {
                break;
            }
        }
        if parents.len() == 1 {
            return parents[0].1;
        }
        level = parents
            .into_iter()
            .map(|(key, child)| Element {
                key,
                value: &[],
                flags: 0,
                child,
            })
            .collect();
        leaf = false;
    }
}

fn write_node(file: &mut Vec<u8>, elements: &[Element<'_>], leaf: bool, size: usize) -> u64 {
    let page = (file.len() / PAGE_SIZE) as u64;
    let pages = size.div_ceil(PAGE_SIZE).max(1);
    file.resize(file.len() + pages * PAGE_SIZE, 0);
    let flags = if leaf { LEAF_PAGE } else { BRANCH_PAGE };
    write_header(file, page, flags, elements.len() as u16, (pages - 1) as u32);
    let base = page as usize * PAGE_SIZE + PAGE_HEADER;
    let mut data = base + elements.len() * ELEMENT;
    for (index, element) in elements.iter().enumerate() {
        let at = base + index * ELEMENT;
        let pos = (data - at) as u32;
        if leaf {
            put_u32(file, at, element.flags);
            put_u32(file, at + 4, pos);
            put_u32(file, at + 8, element.key.len() as u32);
            put_u32(file, at + 12, element.value.len() as u32);
        } else {
            put_u32(file, at, pos);
            put_u32(file, at + 4, element.key.len() as u32);
            put_u64(file, at + 8, element.child);
        }
        file[data..data + element.key.len()].copy_from_slice(element.key);
        data += element.key.len();
        if leaf {
            file[data..data + element.value.len()].copy_from_slice(element.value);
            data += element.value.len();
        }
    }
    page
}

/// A bbolt database read from bytes in memory (a file's whole contents).
#[derive(Debug)]
pub struct BoltFile<'a> {
    bytes: &'a [u8],
    page_size: usize,
    root: u64,
    high_water: u64,
}

/// One leaf entry of a bucket: a key with its value, or a sub-bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub is_bucket: bool,
}

/// Where a bucket's tree lives: a page of the file, or inline in its parent's value.
#[derive(Clone, Copy, Debug)]
enum Tree<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A meta page's fields, if the page holds a valid one.
struct Meta {
    page_size: u32,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn read_meta(bytes: &[u8], offset: usize) -> Result<Option<Meta>, BoltError> {
    let at = offset + PAGE_HEADER;
    let Some(meta) = bytes.get(at..at + META_CHECKSUMMED + 8) else {
        return Ok(None);
    };
    let field32 = |i: usize| u32::from_le_bytes(meta[i..i + 4].try_into().unwrap_or_default());
    let field64 = |i: usize| u64::from_le_bytes(meta[i..i + 8].try_into().unwrap_or_default());
    if field32(0) != MAGIC {
        return Ok(None);
    }
    if field32(4) != VERSION {
        return Err(BoltError::UnsupportedVersion(field32(4)));
    }
    if field64(META_CHECKSUMMED) != fnv1a64(&meta[..META_CHECKSUMMED]) {
        return Ok(None);
    }
    Ok(Some(Meta {
        page_size: field32(8),
        root: field64(16),
        high_water: field64(40),
        txid: field64(48),
    }))
}

impl<'a> BoltFile<'a> {
    /// Reads the meta pages (the valid one with the higher transaction id wins, as in
    /// bbolt). Trailing bytes past the last page (etcd's snapshot checksum) are ignored.
    pub fn open(bytes: &'a [u8]) -> Result<BoltFile<'a>, BoltError> {
        let first = read_meta(bytes, 0)?;
        let page_size = match &first {
            Some(meta) => meta.page_size as usize,
            // Meta page 0 is damaged: try page 1 at the usual page sizes.
            None => [4096usize, 8192, 16384, 65536]
                .into_iter()
                .find(|&size| matches!(read_meta(bytes, size), Ok(Some(_))))
                .ok_or(BoltError::NotBolt)?,
        };
        if !(1024..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(corrupt(format!("page size {page_size}")));
        }
        let second = read_meta(bytes, page_size)?;
        let meta = match (first, second) {
            (Some(a), Some(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Some(meta), None) | (None, Some(meta)) => meta,
            (None, None) => return Err(BoltError::NotBolt),
        };
        if meta.page_size as usize != page_size {
            return Err(corrupt("the meta pages disagree on the page size"));
        }
        let pages = (bytes.len() / page_size) as u64;
        if meta.high_water > pages {
            return Err(corrupt(format!(
                "the meta page counts {} pages, the file holds {pages} (truncated?)",
                meta.high_water
            )));
        }
        Ok(BoltFile {
            bytes,
            page_size,
            root: meta.root,
            high_water: meta.high_water,
        })
    }

    /// The database's size as bbolt reports it: pages up to the high-water mark.
    pub fn size(&self) -> u64 {
        self.high_water * self.page_size as u64
    }

    /// The top-level buckets, in key order.
    pub fn buckets(&self) -> Result<Vec<&'a [u8]>, BoltError> {
        Ok(self
            .entries_of(Tree::Page(self.root))?
            .into_iter()
            .filter(|entry| entry.is_bucket)
            .map(|entry| entry.key)
            .collect())
    }

    /// Every entry of the top-level bucket `name`, in key order (`None`: no such bucket).
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Vec<Entry<'a>>>, BoltError> {
        let Some(entry) = self
            .entries_of(Tree::Page(self.root))?
            .into_iter()
            .find(|entry| entry.key == name)
        else {
            return Ok(None);
        };
        if !entry.is_bucket {
            return Err(corrupt(format!(
                "{:?} in the root is a value, not a bucket",
                String::from_utf8_lossy(name)
            )));
        }
        self.entries_of(bucket_tree(entry.value)?).map(Some)
    }

    /// The value of `key` in the top-level bucket `bucket`, if both exist.
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<&'a [u8]>, BoltError> {
        Ok(self.bucket(bucket)?.and_then(|entries| {
            entries
                .into_iter()
                .find(|entry| entry.key == key && !entry.is_bucket)
                .map(|entry| entry.value)
        }))
    }

    fn entries_of(&self, tree: Tree<'a>) -> Result<Vec<Entry<'a>>, BoltError> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        match tree {
            Tree::Page(page) => self.walk(page, 0, &mut seen, &mut entries)?,
            Tree::Inline(node) => read_node(node, "an inline bucket", &mut |element| {
                match element {
                    NodeElement::Leaf(entry) => entries.push(entry),
                    NodeElement::Branch(..) => {
                        return Err(corrupt("an inline bucket's page is a branch"))
                    }
                }
                Ok(())
            })?,
        }
        if entries.windows(2).any(|pair| pair[0].key >= pair[1].key) {
            return Err(corrupt("a bucket's keys are out of order"));
        }
        Ok(entries)
    }

    fn walk(
        &self,
        page: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        entries: &mut Vec<Entry<'a>>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(format!(
                "page {page}: tree deeper than {MAX_DEPTH}"
            )));
        }
        // Pages 0 and 1 are the meta pages; bbolt puts the freelist and the trees anywhere
        // after them (a page of another type is caught when read).
        if page < 2 || page >= self.high_water {
            return Err(corrupt(format!(
                "page {page}: outside the data pages 2..{}",
                self.high_water
            )));
        }
        if !seen.insert(page) {
            return Err(corrupt(format!("page {page}: referenced twice")));
        }
        let start = page as usize * self.page_size;
        let header = &self.bytes[start..start + PAGE_HEADER];
        let overflow = read_u32(header, 12).unwrap_or_default() as u64;
        let end_page = page + 1 + overflow;
        if end_page > self.high_water {
            return Err(corrupt(format!(
                "page {page}: overflows past the last page"
            )));
        }
        let node = &self.bytes[start..end_page as usize * self.page_size];
        let what = format!("page {page}");
        if read_u64(node, 0) != Some(page) {
            return Err(corrupt(format!("{what}: its header names another page")));
        }
        let mut children = Vec::new();
        read_node(node, &what, &mut |element| {
            match element {
                NodeElement::Leaf(entry) => entries.push(entry),
                NodeElement::Branch(child) => children.push(child),
            }
            Ok(())
        })?;
        for child in children {
            self.walk(child, depth + 1, seen, entries)?;
        }
        Ok(())
    }
}

enum NodeElement<'a> {
    Leaf(Entry<'a>),
    Branch(u64),
}

/// The tree a bucket entry's value points at.
fn bucket_tree(value: &[u8]) -> Result<Tree<'_>, BoltError> {
    let root = read_u64(value, 0).ok_or_else(|| corrupt("a bucket value is too short"))?;
    if root == 0 {
        Ok(Tree::Inline(&value[BUCKET_HEADER.min(value.len())..]))
    } else {
        Ok(Tree::Page(root))
    }
}

/// Reads the elements of one node (a page and its overflow, or an inline bucket's page).
fn read_node<'a>(
    node: &'a [u8],
    what: &str,
    visit: &mut dyn FnMut(NodeElement<'a>) -> Result<(), BoltError>,
) -> Result<(), BoltError> {
    let flags = read_u16(node, 8).ok_or_else(|| corrupt(format!("{what}: no page header")))?;
    let count = read_u16(node, 10).unwrap_or_default() as usize;
    let leaf = match flags {
        LEAF_PAGE => true,
        BRANCH_PAGE => false,
        other => {
            return Err(corrupt(format!(
                "{what}: a bucket's tree holds a page of type {other:#x}"
            )))
        }
    };
    for index in 0..count {
        let at = PAGE_HEADER + index * ELEMENT;
        let truncated = || corrupt(format!("{what}: element {index} lies outside the page"));
        let field = |offset: usize| read_u32(node, at + offset).ok_or_else(truncated);
        if leaf {
            let (flags, pos, key_size, value_size) = (field(0)?, field(4)?, field(8)?, field(12)?);
            let key_at = at + pos as usize;
            let value_at = key_at + key_size as usize;
            let key = node.get(key_at..value_at).ok_or_else(truncated)?;
            let value = node
                .get(value_at..value_at + value_size as usize)
                .ok_or_else(truncated)?;
            visit(NodeElement::Leaf(Entry {
                key,
                value,
                is_bucket: flags & BUCKET_LEAF != 0,
            }))?;
        } else {
            let child = read_u64(node, at + 8).ok_or_else(truncated)?;
            visit(NodeElement::Branch(child))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: usize, value_bytes: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..count)
            .map(|i| {
                (
                    format!("key-{i:08}").into_bytes(),
                    vec![(i % 251) as u8; value_bytes],
                )
            })
            .collect()
    }

    #[test]
    fn buckets_of_every_shape_read_back_in_key_order() {
        let mut builder = BoltBuilder::new();
        builder.bucket(b"empty", Vec::new());
        builder.bucket(b"small", entries(3, 10));
        // Branches of branches: 40,000 small entries are ~300 leaves under 2 levels.
        builder.bucket(b"many", entries(40_000, 20));
        // Values larger than a page overflow onto following pages.
        builder.bucket(b"large", entries(3, 3 * PAGE_SIZE + 17));
        let file = builder.finish();
        assert_eq!(file.len() % PAGE_SIZE, 0);
        let read = BoltFile::open(&file).expect("open");
        assert_eq!(read.size(), file.len() as u64);
        assert_eq!(
            read.buckets().expect("buckets"),
            vec![&b"empty"[..], b"large", b"many", b"small"]
        );
        for (name, expected) in [
            (&b"empty"[..], Vec::new()),
            (b"small", entries(3, 10)),
            (b"many", entries(40_000, 20)),
            (b"large", entries(3, 3 * PAGE_SIZE + 17)),
        ] {
            let got: Vec<(Vec<u8>, Vec<u8>)> = read
                .bucket(name)
                .expect("read")
                .expect("bucket")
                .into_iter()
                .map(|entry| (entry.key.to_vec(), entry.value.to_vec()))
                .collect();
            assert_eq!(got, expected, "bucket {:?}", String::from_utf8_lossy(name));
        }
        assert_eq!(read.bucket(b"missing").expect("read"), None);
        assert_eq!(
            read.get(b"small", b"key-00000001").expect("get"),
            Some(&[1u8; 10][..])
        );
    }

    #[test]
    fn entries_are_sorted_and_a_repeated_key_keeps_its_last_value() {
        let mut builder = BoltBuilder::new();
        builder.bucket(
            b"b",
            vec![
                (b"z".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec()),
                (b"z".to_vec(), b"3".to_vec()),
            ],
        );
        let file = builder.finish();
        let read = BoltFile::open(&file).expect("open");
        let got: Vec<_> = read
            .bucket(b"b")
            .expect("read")
            .expect("bucket")
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect();
        assert_eq!(got, vec![(&b"a"[..], &b"2"[..]), (b"z", b"3")]);
    }

    /// An inline bucket as bbolt writes small buckets: the bucket header with root 0,
    /// then a leaf page inside the parent's value.
    #[test]
    fn inline_buckets_written_by_bbolt_are_read() {
        let mut inline = vec![0u8; BUCKET_HEADER + PAGE_HEADER + ELEMENT];
        let page = BUCKET_HEADER;
        put_u16(&mut inline, page + 8, LEAF_PAGE);
        put_u16(&mut inline, page + 10, 1);
        put_u32(&mut inline, page + PAGE_HEADER + 4, ELEMENT as u32);
        put_u32(&mut inline, page + PAGE_HEADER + 8, 2);
        put_u32(&mut inline, page + PAGE_HEADER + 12, 3);
        inline.extend_from_slice(b"k1val");
        let mut file = BoltBuilder::new().finish();
        // Replace the (empty) root leaf with one holding the inline bucket "in".
        let root = read_u64(&file, PAGE_HEADER + 16).expect("root") as usize;
        let at = root * PAGE_SIZE;
        put_u16(&mut file, at + 10, 1);
        put_u32(&mut file, at + PAGE_HEADER, BUCKET_LEAF);
        put_u32(&mut file, at + PAGE_HEADER + 4, ELEMENT as u32);
        put_u32(&mut file, at + PAGE_HEADER + 8, 2);
        put_u32(&mut file, at + PAGE_HEADER + 12, inline.len() as u32);
        let data = at + PAGE_HEADER + ELEMENT;
        file[data..data + 2].copy_from_slice(b"in");
        file[data + 2..data + 2 + inline.len()].copy_from_slice(&inline);
        let read = BoltFile::open(&file).expect("open");
        assert_eq!(read.get(b"in", b"k1").expect("get"), Some(&b"val"[..]));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let mut builder = BoltBuilder::new();
        builder.bucket(b"many", entries(2_000, 30));
        let file = builder.finish();
        assert_eq!(
            BoltFile::open(b"synod-kv-backup\n").unwrap_err(),
            BoltError::NotBolt
        );
        assert_eq!(BoltFile::open(&[]).unwrap_err(), BoltError::NotBolt);
        // Truncated: the meta page counts pages the file no longer has.
        let truncated = &file[..file.len() - PAGE_SIZE];
        assert!(matches!(
            BoltFile::open(truncated),
            Err(BoltError::Corrupt(_))
        ));
        // One damaged meta page: the other still opens the file.
        let mut one_meta = file.clone();
        one_meta[PAGE_HEADER + 20] ^= 0xff;
        assert!(BoltFile::open(&one_meta)
            .expect("meta 1")
            .bucket(b"many")
            .is_ok());
        // Every single byte flipped in the data pages: reading may fail or see other
        // bytes, but never panics or loops.
        for at in (3 * PAGE_SIZE..file.len()).step_by(7) {
            let mut flipped = file.clone();
            flipped[at] ^= 0x5a;
            if let Ok(read) = BoltFile::open(&flipped) {
                let _ = read.bucket(b"many");
            }
        }
        // A branch that points at itself is caught, not followed forever.
        let root = read_u64(&file, PAGE_HEADER + 16).expect("root");
        let mut cyclic = file.clone();
        let many_root = {
            let read = BoltFile::open(&file).expect("open");
            let entry = read
                .entries_of(Tree::Page(root))
                .expect("root")
                .into_iter()
                .find(|entry| entry.key == b"many")
                .expect("many");
            read_u64(entry.value, 0).expect("root page")
        };
        let at = many_root as usize * PAGE_SIZE;
        assert_eq!(read_u16(&cyclic, at + 8), Some(BRANCH_PAGE));
        put_u64(&mut cyclic, at + PAGE_HEADER + 8, many_root);
        let error = BoltFile::open(&cyclic)
            .expect("open")
            .bucket(b"many")
            .unwrap_err();
        assert!(error.to_string().contains("referenced twice"), "{error}");
    }
}
