//! The bootlun engine (being written).
