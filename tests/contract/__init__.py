"""The status codes and error details the store promises, one table per concern: every rejection asserted once."""
