//! Clean Descriptors: free text keeps only words known not to identify anyone.
//!
//! A description can say "CT HEAD W/O CONTRAST" or "CT HEAD for J SMITH 1962": no rule can
//! recognise every name, so cleaning works the other way round. Text is split into words and
//! only words on an allow-list of imaging vocabulary (modalities, anatomy, technique, common
//! abbreviations) and short measurements ("5MM", "3D") survive; everything else is dropped.
//! The result can lose useful words; it cannot keep a name unless the name is also an
//! imaging term.

const ALLOWED: &[&str] = &[
    // modalities and techniques
    "CT", "MR", "MRI", "PET", "SPECT", "US", "XR", "CR", "DX", "MG", "NM", "RF", "XA", "OT", "PT", "SR", "RT",
    "CTA", "MRA", "MRV", "DWI", "ADC", "DTI", "SWI", "FLAIR", "STIR", "TSE", "FSE", "SE", "GRE", "EPI", "MPRAGE",
    "SPACE", "VIBE", "DIXON", "TOF", "PERFUSION", "DIFFUSION", "ANGIO", "ANGIOGRAPHY", "VENOGRAPHY", "DOPPLER",
    "T1", "T2", "PD", "T1W", "T2W", "PDW", "FS", "FATSAT", "GAD", "GADO", "POST", "PRE", "DELAYED", "ARTERIAL",
    "VENOUS", "PORTAL", "PHASE", "NONCONTRAST", "CONTRAST", "WITH", "WITHOUT", "W", "WO", "AND", "OR", "OF", "THE",
    "IV", "ORAL", "LOW", "HIGH", "DOSE", "LD", "HD", "SCOUT", "LOCALIZER", "LOCALISER", "SURVEY", "TOPOGRAM",
    "AXIAL", "AX", "SAGITTAL", "SAG", "CORONAL", "COR", "OBLIQUE", "OBL", "MPR", "MIP", "MINIP", "VR", "3D", "2D",
    "THIN", "THICK", "SLICE", "SLICES", "SERIES", "STUDY", "ROUTINE", "PROTOCOL", "STANDARD", "HELICAL", "SPIRAL",
    "BONE", "SOFT", "TISSUE", "LUNG", "WINDOW", "KERNEL", "SHARP", "SMOOTH", "RECON", "REFORMAT", "REFORMATS",
    "SCREENING", "DIAGNOSTIC", "FOLLOW", "UP", "FOLLOWUP", "BILATERAL", "BILAT", "LEFT", "RIGHT", "LT", "RT", "L", "R",
    "CC", "MLO", "ML", "LM", "XCCL", "TOMO", "TOMOSYNTHESIS", "PA", "AP", "LAT", "LATERAL", "FRONTAL", "VIEW",
    "VIEWS", "DECUBITUS", "ERECT", "SUPINE", "PRONE", "PORTABLE", "INSPIRATION", "EXPIRATION",
    "DOSE", "REPORT", "PLAN", "STRUCTURE", "SET", "IMAGE", "IMAGES", "PRIMARY", "SECONDARY", "DERIVED", "ORIGINAL",
    // anatomy
    "HEAD", "BRAIN", "SKULL", "FACE", "FACIAL", "SINUS", "SINUSES", "ORBIT", "ORBITS", "IAC", "NECK", "SPINE",
    "CERVICAL", "THORACIC", "LUMBAR", "SACRUM", "CSPINE", "TSPINE", "LSPINE", "CHEST", "THORAX", "LUNGS", "HEART",
    "CARDIAC", "CORONARY", "AORTA", "AORTIC", "ABDOMEN", "ABD", "PELVIS", "PELVIC", "LIVER", "HEPATIC", "KIDNEY",
    "KIDNEYS", "RENAL", "PANCREAS", "SPLEEN", "BLADDER", "PROSTATE", "UTERUS", "OVARY", "OVARIES", "BREAST",
    "BREASTS", "MAMMO", "MAMMOGRAPHY", "THYROID", "SHOULDER", "ARM", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER",
    "HIP", "HIPS", "FEMUR", "KNEE", "KNEES", "LEG", "TIBIA", "ANKLE", "FOOT", "FEET", "TOE", "EXTREMITY", "UPPER",
    "LOWER", "WHOLE", "BODY", "WB", "CAROTID", "CIRCLE", "WILLIS", "VESSELS", "VASCULAR", "JOINT", "SOFTTISSUE",
    "PHANTOM", "TEST", "QA", "QC",
];

/// True when `word` (upper-case) may stay: on the list, or a short measurement.
fn allowed(word: &str) -> bool {
    if ALLOWED.contains(&word) {
        return true;
    }
    // Short numbers with a unit: slice thickness, a phase, a b-value. Never more than
    // three digits, so a date, a year or an identifier cannot pass.
    let digits = word.bytes().take_while(|b| b.is_ascii_digit()).count();
    let unit = &word[digits..];
    (1..=3).contains(&digits) && ["", "MM", "CM", "D", "S", "MS"].contains(&unit)
}

/// Clean `text`: the kept words joined by single spaces, and whether anything was dropped.
pub(crate) fn clean_text(text: &str) -> (String, bool) {
    let mut kept = Vec::new();
    let mut dropped = false;
    // "W/O" (without) must not become "W" (with).
    let text = text.to_ascii_uppercase().replace("W/O", "WO");
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        if allowed(word) {
            kept.push(word);
        } else {
            dropped = true;
        }
    }
    // Non-ASCII letters split words above and are dropped with them.
    if !text.is_ascii() {
        dropped = true;
    }
    (kept.join(" "), dropped)
}

#[cfg(test)]
mod tests {
    use super::clean_text;

    #[test]
    fn names_and_dates_are_dropped_vocabulary_is_kept() {
        assert_eq!(clean_text("CT Head w/o contrast"), ("CT HEAD WO CONTRAST".to_string(), false));
        let (c, dropped) = clean_text("MR BRAIN for SMITH^JOHN 19620704 T1 5mm");
        assert_eq!(c, "MR BRAIN T1 5MM");
        assert!(dropped);
        assert_eq!(clean_text("CHEST PA"), ("CHEST PA".to_string(), false));
        assert_eq!(clean_text("CANARY0001").0, "");
        assert_eq!(clean_text("Müller CT").0, "CT");
    }
}
