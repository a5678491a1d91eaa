// Entry point for `node --test scripts/idp/` (its default pattern wants *.test.mjs).
import './selftest.mjs';
