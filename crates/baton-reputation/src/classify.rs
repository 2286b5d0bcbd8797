//! Reply classification (filled in next).
