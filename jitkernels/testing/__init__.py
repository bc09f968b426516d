"""Test helpers for JitKernels (a fake Hugging Face Hub server)."""
