"""Named column layouts shared by the fused backends, the Triton kernels and the class-parallel merge.

Defined once here; code indexes these tensors by name, never by a bare integer offset.

- `Head`: the columns of z_y / dz_y (B, H) f32 (H = 2 for two heads, 1 for the teacher alone).
- `Stat`: the columns of the (B, 4) f32 stats a fused forward returns and its backward takes: the
  log-sum-exps of the four softmax families.  The native kernel (kernels/native/head_loss.cpp) writes
  the same order.
- `Partial`: the fields of the Triton forward's per-split partial state (splits, len(Partial), B) f32:
  running max and running sum of exp(x - max) of each softmax family in `Stat` order, then the KL
  numerator (single head: the teacher CE pair only).
"""

from enum import IntEnum


class Head(IntEnum):
    TEACHER = 0
    STUDENT = 1


class Stat(IntEnum):
    LSE_ZT = Head.TEACHER  # teacher CE logits z_t (a head's CE column is its `Head` index)
    LSE_ZS = Head.STUDENT  # student CE logits z_s
    LSE_A = 2  # teacher KL logits a = cos_t / tau_t
    LSE_B = 3  # student KL logits b = cos_s / tau_s


class Partial(IntEnum):
    M_ZT = 0
    L_ZT = 1
    M_ZS = 2
    L_ZS = 3
    M_A = 4
    L_A = 5
    M_B = 6
    L_B = 7
    KL_NUM = 8


# Running maxima and sums of the families, in `Stat` order.
MAX_FIELDS = (Partial.M_ZT, Partial.M_ZS, Partial.M_A, Partial.M_B)
SUM_FIELDS = (Partial.L_ZT, Partial.L_ZS, Partial.L_A, Partial.L_B)
