"""The status codes and error details the store promises: every rejection asserted once."""
