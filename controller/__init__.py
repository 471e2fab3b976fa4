"""The resource controller: machine readings in, a position α in the subspace out."""
