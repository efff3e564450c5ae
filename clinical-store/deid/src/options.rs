//! What the caller chooses: the PS3.15 profile options, and the limits that bound the work
//! done on untrusted input.

/// The PS3.15 Annex E profile options applied on top of the Basic Application
/// Confidentiality Profile. Each field switches one option column of Table E.1-1 on.
///
/// Options this crate cannot honour faithfully are refused by [`crate::split`] with
/// [`crate::Error::UnsupportedOption`] rather than silently downgraded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Retain Longitudinal Temporal Information with Full Dates (113106).
    pub retain_long_full_dates: bool,
    /// Retain Longitudinal Temporal Information with Modified Dates (113107): every date
    /// the option's column marks, and every date the table does not list, moves by
    /// `date_offset_days` (times of day are kept: a whole-day shift keeps every interval).
    /// Set both with [`Options::with_modified_dates`].
    pub retain_long_modified_dates: bool,
    /// The shift of [`Options::retain_long_modified_dates`], in days: the same for every
    /// object of one subject, so intervals between them survive. Not zero; at most 100
    /// years either way.
    pub date_offset_days: i32,
    /// Retain Patient Characteristics (113108).
    pub retain_patient_characteristics: bool,
    /// Clean Descriptors (113105): free-text descriptions keep only allow-listed words.
    pub clean_descriptors: bool,
    /// Retain UIDs (113110): UIDs are kept instead of replaced.
    pub retain_uids: bool,
    /// Retain Device Identity (113109).
    pub retain_device_identity: bool,
    /// Retain Institution Identity (113112).
    pub retain_institution_identity: bool,
    /// Retain Safe Private (113111). Not supported: every private attribute is removed.
    pub retain_safe_private: bool,
    /// Clean Graphics (113103). Not supported: overlays and curves are removed.
    pub clean_graphics: bool,
    /// Clean Structured Content (113104): content sequences are kept and de-identified
    /// item by item instead of emptied.
    pub clean_structured_content: bool,
    /// Not a column of the table: also remove every date, time and date-time attribute
    /// (VR DA, DT, TM) the table has no row for. The table only judges the attributes it
    /// lists, and a public attribute it does not list is otherwise kept; for a research
    /// release "no dates" must not depend on the table being as new as the data.
    pub remove_unlisted_temporal: bool,
}

impl Options {
    /// The Basic Profile alone: nothing retained, nothing cleaned.
    pub const fn basic() -> Options {
        Options {
            retain_long_full_dates: false,
            retain_long_modified_dates: false,
            date_offset_days: 0,
            retain_patient_characteristics: false,
            clean_descriptors: false,
            retain_uids: false,
            retain_device_identity: false,
            retain_institution_identity: false,
            retain_safe_private: false,
            clean_graphics: false,
            clean_structured_content: false,
            remove_unlisted_temporal: false,
        }
    }

    /// For care: clinicians need real dates (to compare a scan with last year's) and the
    /// patient's characteristics (age, sex, size, weight). Descriptions are cleaned, not
    /// dropped, so a study list still says what each study is.
    pub const fn care() -> Options {
        Options {
            retain_long_full_dates: true,
            retain_patient_characteristics: true,
            clean_descriptors: true,
            ..Options::basic()
        }
    }

    /// For research: the Basic Profile with Clean Descriptors and Clean Structured Content,
    /// so the data keep their meaning without dates, characteristics or identifiers; dates
    /// and times the table does not list are removed too (`remove_unlisted_temporal`).
    pub const fn research() -> Options {
        Options {
            clean_descriptors: true,
            clean_structured_content: true,
            remove_unlisted_temporal: true,
            ..Options::basic()
        }
    }

    /// These options with Retain Longitudinal Temporal Information with Modified Dates on,
    /// moving dates by `days` (the caller picks one offset per subject and keeps it secret).
    pub const fn with_modified_dates(self, days: i32) -> Options {
        Options { retain_long_modified_dates: true, date_offset_days: days, ..self }
    }

    /// The options in the order of the table's option columns.
    pub(crate) fn as_array(&self) -> [bool; 10] {
        [
            self.retain_long_full_dates,
            self.retain_long_modified_dates,
            self.retain_patient_characteristics,
            self.clean_descriptors,
            self.retain_uids,
            self.retain_device_identity,
            self.retain_institution_identity,
            self.retain_safe_private,
            self.clean_graphics,
            self.clean_structured_content,
        ]
    }
}

/// Bounds on the work done for one instance. Input beyond them is refused, never truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes of the dataset outside the pixel data (header before it plus any elements
    /// after it) that may be held in memory.
    pub max_header_bytes: u64,
    /// Deepest nesting of sequences.
    pub max_depth: u32,
    /// Bytes a deflated dataset may inflate to (the deflate-bomb cap).
    pub max_inflated_bytes: u64,
    /// Bytes of pixel data that will be streamed through.
    pub max_pixel_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 << 20,
            max_depth: 16,
            max_inflated_bytes: 4 << 30,
            max_pixel_bytes: 8 << 30,
        }
    }
}

impl Limits {
    /// Set the header limit.
    pub fn with_max_header_bytes(mut self, n: u64) -> Self {
        self.max_header_bytes = n;
        self
    }
    /// Set the nesting limit.
    pub fn with_max_depth(mut self, n: u32) -> Self {
        self.max_depth = n;
        self
    }
    /// Set the inflated-size limit.
    pub fn with_max_inflated_bytes(mut self, n: u64) -> Self {
        self.max_inflated_bytes = n;
        self
    }
    /// Set the pixel-data limit.
    pub fn with_max_pixel_bytes(mut self, n: u64) -> Self {
        self.max_pixel_bytes = n;
        self
    }
}
