//! The site throttle (filled in next).
