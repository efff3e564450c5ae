//! The one error type of this crate.
//!
//! No variant carries an element value: input values are PHI until proven otherwise, so an
//! error names the attribute (a public tag keyword or number) and what was wrong with it,
//! never what it contained.

/// Why an instance could not be split. On any error nothing written to the output is
/// meant to be kept: the caller discards it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the input or writing the output failed.
    #[error("i/o error while {action}: {source}; check the source and destination streams")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The input ended before the structure it announced was complete.
    #[error("the DICOM input is truncated (ended while reading {what}); resend the complete file")]
    Truncated { what: &'static str },
    /// The input does not start with the PS3.10 128-byte preamble and "DICM" prefix.
    #[error("not a DICOM Part 10 file: no 128-byte preamble followed by \"DICM\"; a raw dataset must be wrapped in a Part 10 file (with file meta information) first")]
    NotPart10,
    /// The file meta information group is missing, malformed or lacks a required element.
    #[error("the file meta information is invalid: {what}; rewrite the file with a conforming DICOM toolkit")]
    BadMeta { what: &'static str },
    /// The transfer syntax is not one this crate can parse; it fails closed.
    #[error("unknown or unsupported transfer syntax; convert the instance to Explicit VR Little Endian first")]
    UnknownTransferSyntax,
    /// The dataset is structurally invalid (lengths that do not add up, stray delimiters...).
    #[error("malformed dataset at element ({group:04X},{element:04X}): {what}")]
    Malformed { group: u16, element: u16, what: &'static str },
    /// Sequences nest deeper than [`crate::Limits::max_depth`].
    #[error("sequences nest deeper than the limit of {limit}; the file is malformed or hostile")]
    TooDeep { limit: u32 },
    /// The non-pixel part of the dataset exceeds [`crate::Limits::max_header_bytes`].
    #[error("the dataset outside the pixel data exceeds the limit of {limit} bytes; raise Limits::max_header_bytes if this instance is genuine")]
    HeaderTooLarge { limit: u64 },
    /// The pixel data exceed [`crate::Limits::max_pixel_bytes`].
    #[error("the pixel data exceed the limit of {limit} bytes; raise Limits::max_pixel_bytes if this instance is genuine")]
    PixelDataTooLarge { limit: u64 },
    /// A deflated dataset inflates beyond [`crate::Limits::max_inflated_bytes`], or its
    /// compressed stream is corrupt.
    #[error("the deflated dataset {what}; the file is corrupt or a decompression bomb")]
    Deflate { what: &'static str },
    /// A required attribute is absent or empty.
    #[error("required attribute {keyword} is missing or empty; the instance cannot be stored without it")]
    MissingAttribute { keyword: &'static str },
    /// A text value could not be decoded in the instance's character set.
    #[error("{keyword} could not be decoded in the instance's Specific Character Set; fix the character set or the value")]
    BadText { keyword: &'static str },
    /// The instance declares a Specific Character Set this crate cannot decode.
    #[error("the instance's Specific Character Set is not supported; convert the text to ISO_IR 192 (UTF-8)")]
    UnsupportedCharacterSet,
    /// The caller's pseudonym cannot be written as a Patient ID.
    #[error("the pseudonym is not a valid Patient ID: it must be 1 to 64 printable ASCII characters without a backslash")]
    InvalidPseudonym,
    /// An option was requested that this crate cannot apply faithfully; it refuses rather
    /// than label the output with a guarantee it does not give.
    #[error("the {option} option is not supported; switch it off (the Basic Profile action applies instead)")]
    UnsupportedOption { option: &'static str },
    /// Options that cannot be applied together, or an option's value out of range.
    #[error("invalid de-identification options: {why}")]
    InvalidOptions { why: &'static str },
    /// A frame number outside the instance's frames was asked for.
    #[error("no such frame: the instance has {frames} frame(s), numbered from 1")]
    NoSuchFrame { frames: u32 },
    /// The frames of multi-frame native pixel data do not start on byte boundaries (1-bit
    /// pixels), so one frame cannot be cut out as bytes.
    #[error("the frames of this instance are not byte-aligned (1-bit pixel data); retrieve the whole instance instead")]
    FramesNotByteAligned,
    /// Encapsulated pixel data whose fragments cannot be assigned to frames (no basic
    /// offset table and not one fragment per frame).
    #[error("the frames of this compressed instance cannot be located (no offset table, fragments do not match frames); retrieve the whole instance instead")]
    FramesUnlocatable,
}

impl Error {
    /// An I/O error while reading input; an early end of input becomes [`Error::Truncated`].
    pub(crate) fn read(what: &'static str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated { what }
        } else if let Some(fault) = e.get_ref().and_then(|i| i.downcast_ref::<DeflateFault>()) {
            match fault {
                DeflateFault::Cap => Error::Deflate { what: "inflates beyond Limits::max_inflated_bytes" },
                DeflateFault::Corrupt => Error::Deflate { what: "is not a valid deflate stream" },
            }
        } else {
            Error::Io { action: "reading the input", source: e }
        }
    }

    pub(crate) fn write(e: std::io::Error) -> Error {
        Error::Io { action: "writing the output", source: e }
    }

    pub(crate) fn malformed(tag: u32, what: &'static str) -> Error {
        Error::Malformed { group: (tag >> 16) as u16, element: tag as u16, what }
    }
}

/// Why inflating failed, carried inside an `io::Error` out of the inflating reader.
#[derive(Debug)]
pub(crate) enum DeflateFault {
    Cap,
    Corrupt,
}

impl std::fmt::Display for DeflateFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeflateFault::Cap => "inflated size limit reached",
            DeflateFault::Corrupt => "corrupt deflate stream",
        })
    }
}
impl std::error::Error for DeflateFault {}
