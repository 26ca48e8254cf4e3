//! The parts of a module's ELF that say which module it is: the `.modinfo`
//! section and the name in `.gnu.linkonce.this_module`.
//!
//! `object` checks the header and that the section table lies inside the
//! image; section names are compared here at a fixed length rather than
//! looked up as C strings, so a string table without NULs cannot make each of
//! 65535 lookups scan megabytes.

use object::elf::{FileHeader32, FileHeader64, ELFCLASS32, ELFCLASS64, ET_REL};
use object::read::elf::{FileHeader, SectionHeader};
use object::Endianness;

use super::{ImageError, Limits};
use crate::record::fields::escape_bytes;

pub(super) const MAGIC: &[u8] = b"\x7fELF";
const MODINFO: &[u8] = b".modinfo";
const THIS_MODULE: &[u8] = b".gnu.linkonce.this_module";

/// A section's bytes and where they start in the image.
pub(super) struct SectionData<'a> {
    pub data: &'a [u8],
    pub offset: u64,
}

pub(super) struct ElfInfo<'a> {
    pub modinfo: Option<SectionData<'a>>,
    pub this_module_name: Option<String>,
    pub warnings: Vec<String>,
}

/// Read the ELF image (without its signature).
pub(super) fn read<'a>(image: &'a [u8], limits: &Limits) -> Result<ElfInfo<'a>, ImageError> {
    const EI_CLASS: usize = 4;
    match image.get(EI_CLASS) {
        Some(&ELFCLASS64) => read_as::<FileHeader64<Endianness>>(image, limits),
        Some(&ELFCLASS32) => read_as::<FileHeader32<Endianness>>(image, limits),
        class => Err(ImageError::Elf {
            what: "e_ident class",
            offset: EI_CLASS as u64,
            detail: match class {
                Some(c) => format!("{c} is neither ELFCLASS32 nor ELFCLASS64"),
                None => "image ends before it".to_string(),
            },
        }),
    }
}

fn read_as<'a, Elf>(image: &'a [u8], limits: &Limits) -> Result<ElfInfo<'a>, ImageError>
where
    Elf: FileHeader<Endian = Endianness>,
{
    let elf_err = |what, offset, e: object::Error| ImageError::Elf {
        what,
        offset,
        detail: e.to_string(),
    };
    let header = Elf::parse(image).map_err(|e| elf_err("header", 0, e))?;
    let endian = header.endian().map_err(|e| elf_err("header", 0, e))?;
    let e_type = header.e_type(endian);
    if e_type != ET_REL {
        return Err(ImageError::NotRelocatable { e_type });
    }
    let shoff: u64 = header.e_shoff(endian).into();
    let count = header
        .shnum(endian, image)
        .map_err(|e| elf_err("section count", shoff, e))?;
    if count > limits.max_sections {
        return Err(ImageError::TooManySections {
            count: count as u64,
            offset: shoff,
            limit: limits.max_sections,
        });
    }
    let sections = header
        .section_headers(endian, image)
        .map_err(|e| elf_err("section headers", shoff, e))?;
    let names = section_names(header, endian, image, sections)?;
    let mut info = ElfInfo {
        modinfo: None,
        this_module_name: None,
        warnings: Vec::new(),
    };
    // The first section of each name counts, as for kmod and the kernel.
    if let Some(index) = find_section(endian, sections, names, MODINFO) {
        info.modinfo = Some(section_data(endian, image, sections, index, MODINFO)?);
    }
    if let Some(index) = find_section(endian, sections, names, THIS_MODULE) {
        let section = section_data(endian, image, sections, index, THIS_MODULE)?;
        info.this_module_name = this_module_name(&section, header.is_type_64());
        if info.this_module_name.is_none() {
            info.warnings.push(format!(
                "section {} at offset {:#x} holds no name in struct module",
                escape_bytes(THIS_MODULE),
                section.offset
            ));
        }
    } else {
        info.warnings
            .push(format!("no {} section", escape_bytes(THIS_MODULE)));
    }
    Ok(info)
}

/// The bytes of the section-name string table (`e_shstrndx`).
fn section_names<'a, Elf>(
    header: &Elf,
    endian: Endianness,
    image: &'a [u8],
    sections: &[Elf::SectionHeader],
) -> Result<&'a [u8], ImageError>
where
    Elf: FileHeader<Endian = Endianness>,
{
    if sections.is_empty() {
        return Ok(&[]);
    }
    let index = header
        .shstrndx(endian, image)
        .map_err(|e| ImageError::Elf {
            what: "e_shstrndx",
            offset: 0,
            detail: e.to_string(),
        })? as usize;
    let Some(section) = sections.get(index) else {
        return Err(ImageError::Elf {
            what: "e_shstrndx",
            offset: 0,
            detail: format!("index {index} is past the {} sections", sections.len()),
        });
    };
    section
        .data(endian, image)
        .map_err(|_| out_of_bounds(endian, image, section, index, b".shstrtab"))
}

fn find_section<S: SectionHeader<Endian = Endianness>>(
    endian: Endianness,
    sections: &[S],
    names: &[u8],
    wanted: &[u8],
) -> Option<usize> {
    sections.iter().position(|section| {
        let start = section.sh_name(endian) as usize;
        // Compare the name and its terminating NUL, never scanning further.
        start
            .checked_add(wanted.len() + 1)
            .and_then(|end| names.get(start..end))
            .is_some_and(|name| &name[..wanted.len()] == wanted && name[wanted.len()] == 0)
    })
}

fn section_data<'a, S: SectionHeader<Endian = Endianness>>(
    endian: Endianness,
    image: &'a [u8],
    sections: &[S],
    index: usize,
    name: &[u8],
) -> Result<SectionData<'a>, ImageError> {
    let section = &sections[index];
    let data = section
        .data(endian, image)
        .map_err(|_| out_of_bounds(endian, image, section, index, name))?;
    Ok(SectionData {
        data,
        offset: section.sh_offset(endian).into(),
    })
}

fn out_of_bounds<S: SectionHeader<Endian = Endianness>>(
    endian: Endianness,
    image: &[u8],
    section: &S,
    index: usize,
    name: &[u8],
) -> ImageError {
    ImageError::SectionOutOfBounds {
        name: escape_bytes(name),
        index,
        offset: section.sh_offset(endian).into(),
        size: section.sh_size(endian).into(),
        len: image.len(),
    }
}

/// The `name` field of `struct module`: after `enum module_state state` and
/// `struct list_head list` (offset 24 on 64-bit, 12 on 32-bit, unchanged
/// since Linux 2.6), `MODULE_NAME_LEN` (64 - sizeof(long)) bytes.
fn this_module_name(section: &SectionData<'_>, is_64: bool) -> Option<String> {
    let (offset, len) = if is_64 { (24, 56) } else { (12, 60) };
    let field = section.data.get(offset..)?;
    let field = &field[..field.len().min(len)];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    if end == 0 {
        return None;
    }
    Some(escape_bytes(&field[..end]))
}
