//! The tenant verdict (filled in next).
