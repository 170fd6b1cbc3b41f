"""Host-side diagnosis: logged series in, findings out (no torch or Lightning import)."""
