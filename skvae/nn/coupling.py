"""Invertible building blocks: affine couplings and fixed mixing layers.

Every block maps ``x`` of shape ``(n_rows, n_features)`` to ``(y, log_det)``,
where ``log_det`` of shape ``(n_rows,)`` is log|det dy/dx| of each row, and
has an exact ``inverse``.
"""

import math

import scipy.linalg
import torch
from torch import nn

from .base import build_network

# The gates are stored divided by this gain: Adam moves every parameter by
# about the learning rate per step, and a gate that starts at zero would
# otherwise open ten times slower than a zeroed last layer of a subnet grows
# (on a 2-D ring, 25 epochs reached -2.13 nats with gain 1, -1.88 with 10
# and -1.90 with zeroed last layers).
GATE_GAIN = 10.0


def soft_clamp(a, clamp):
    """Squash ``a`` smoothly into ``(-clamp, clamp)``.

    Computes ``clamp * (2 / pi) * atan(a / clamp)``, the soft clamp of
    Nguyen, Ardizzone & Köthe (FrEIA's ``0.636 * atan``). Applied to the
    log-scales of a coupling, it bounds the scale of each block to
    ``(exp(-clamp), exp(clamp))``, so that ``exp`` never overflows while the
    gradient stays non-zero everywhere.

    Parameters
    ----------
    a : torch.Tensor
        Raw values.
    clamp : float
        Bound on the absolute value of the output; positive.

    Returns
    -------
    torch.Tensor
        Tensor of the shape of ``a``, strictly inside ``(-clamp, clamp)``.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.coupling import soft_clamp
    >>> soft_clamp(torch.tensor([-1e6, 0.0, 1e6]), 2.0)
    tensor([-2.0000,  0.0000,  2.0000])
    """
    return clamp * (2.0 / math.pi) * torch.atan(a / clamp)


class AffineCoupling(nn.Module):
    """Two-sided affine coupling block with soft-clamped scales.

    The input is split into ``x1`` (the first ``ceil(n_features / 2)``
    columns) and ``x2``; then ``y2 = x2 * exp(s1(x1)) + t1(x1)`` and
    ``y1 = x1 * exp(s2(y2)) + t2(y2)``, and the output is ``[y1, y2]``. The
    log-scales pass through :func:`soft_clamp`. Each side's ``(s, t)`` comes
    from one subnet, a black box that maps the conditioning half, of shape
    ``(n_rows, n_in)``, to ``(n_rows, 2 * n_out)``: the raw log-scales of the
    other half's ``n_out`` features, then their shifts. Its output is
    multiplied by a learned gate, one factor per output, that starts at
    zero, so the block is the identity at initialisation whatever the
    subnet, and the subnet itself keeps its random initial weights (a
    zeroed last layer as well would leave no gradient to start from).

    With a single feature there is nothing to condition on: the block is then
    the elementwise affine map ``y = x * exp(soft_clamp(s)) + t`` with a learned
    log-scale ``s`` and shift ``t`` (both starting at zero, so still the
    identity), and ``subnet_layers``, ``activation``, ``subnet`` and
    ``generator`` are unused. A stack of such blocks is one affine map, which
    keeps one-feature data usable by the estimators.

    Parameters
    ----------
    n_features : int
        Width of the input and output; at least 1.
    subnet_layers : sequence of int, default=(64, 64)
        Hidden widths of each of the two MLP subnets; unused when ``subnet``
        is given.
    clamp : float, default=2.0
        Bound on each log-scale (see :func:`soft_clamp`).
    activation : str, default="silu"
        Non-linearity of the MLP subnets (see :class:`~skvae.nn.MLP`).
    subnet : type or callable, default=None
        Subnet to use instead of the MLP: an ``nn.Module`` class or a callable
        ``(n_inputs, n_outputs) -> nn.Module`` (see
        :func:`~skvae.nn.base.build_network`), called once per side with
        ``(ceil(n_features / 2), 2 * (n_features // 2))`` and
        ``(n_features // 2, 2 * ceil(n_features / 2))``.
    generator : torch.Generator, default=None
        Source of randomness for the initial weights of the MLP subnets.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.coupling import AffineCoupling
    >>> block = AffineCoupling(3, (8,), generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(4, 3)
    >>> y, log_det = block(x)
    >>> y.shape, log_det.shape
    (torch.Size([4, 3]), torch.Size([4]))
    >>> torch.equal(y, x)
    True
    >>> with torch.no_grad():
    ...     _ = block.gate.fill_(0.05)
    >>> torch.allclose(block.inverse(block(x)[0]), x)
    True
    """

    def __init__(
        self,
        n_features,
        subnet_layers=(64, 64),
        clamp=2.0,
        activation="silu",
        subnet=None,
        generator=None,
    ):
        super().__init__()
        self.n_features = n_features
        self.clamp = clamp
        if n_features == 1:
            self.log_scale = nn.Parameter(torch.zeros(1))
            self.shift = nn.Parameter(torch.zeros(1))
            return
        self.n_first = math.ceil(n_features / 2)
        n_second = n_features - self.n_first
        self.subnet1 = build_network(
            subnet, self.n_first, 2 * n_second, subnet_layers, activation, generator
        )
        self.subnet2 = build_network(
            subnet, n_second, 2 * self.n_first, subnet_layers, activation, generator
        )
        # One parameter for both sides' gates: the optimiser's cost grows with
        # the number of parameter tensors. Log-scale gates are stored divided
        # by the clamp, which saves a division of every subnet output.
        self.gate = nn.Parameter(torch.zeros(2 * n_features))
        self._split_gate = 2 * n_second

    def _scale_shift(self, subnet, gate, condition):
        out = subnet(condition) * (gate * GATE_GAIN)
        n_out = out.shape[1] // 2
        # soft_clamp(clamp * a) = clamp * 2 / pi * atan(a): the log-scale
        # gates hold the division by the clamp, which saves one pass over
        # the subnet's output.
        log_scale = (self.clamp * 2.0 / math.pi) * torch.atan(out[:, :n_out])
        return log_scale, out[:, n_out:]

    def forward(self, x):
        """Map ``x`` to ``(y, log_det)``, log_det of shape ``(n_rows,)``."""
        if self.n_features == 1:
            log_scale = soft_clamp(self.log_scale, self.clamp)
            y = x * torch.exp(log_scale) + self.shift
            return y, log_scale.expand(x.shape[0])
        gate1, gate2 = self.gate[: self._split_gate], self.gate[self._split_gate :]
        x1, x2 = x[:, : self.n_first], x[:, self.n_first :]
        s1, t1 = self._scale_shift(self.subnet1, gate1, x1)
        y2 = torch.addcmul(t1, x2, torch.exp(s1))
        s2, t2 = self._scale_shift(self.subnet2, gate2, y2)
        y1 = torch.addcmul(t2, x1, torch.exp(s2))
        return torch.cat([y1, y2], dim=1), s1.sum(1) + s2.sum(1)

    def inverse(self, y, second_half_zero=False):
        """The ``x`` with ``forward(x)[0] == y``.

        With ``second_half_zero=True`` the caller vouches that the last
        ``n_features // 2`` columns of ``y`` are zero (a padded code): the
        subnet that reads them then runs on one row of zeros, broadcast to
        every row, instead of on all of them.
        """
        if self.n_features == 1:
            return (y - self.shift) * torch.exp(-soft_clamp(self.log_scale, self.clamp))
        gate1, gate2 = self.gate[: self._split_gate], self.gate[self._split_gate :]
        y1, y2 = y[:, : self.n_first], y[:, self.n_first :]
        if second_half_zero:
            s2, t2 = self._scale_shift(self.subnet2, gate2, torch.zeros_like(y2[:1]))
            x1 = (y1 - t2) * torch.exp(-s2)
            s1, t1 = self._scale_shift(self.subnet1, gate1, x1)
            x2 = -t1 * torch.exp(-s1)
        else:
            s2, t2 = self._scale_shift(self.subnet2, gate2, y2)
            x1 = (y1 - t2) * torch.exp(-s2)
            s1, t1 = self._scale_shift(self.subnet1, gate1, x1)
            x2 = (y2 - t1) * torch.exp(-s1)
        return torch.cat([x1, x2], dim=1)


class FixedPermutation(nn.Module):
    """A random permutation of the features, drawn once and never trained.

    Parameters
    ----------
    n_features : int
        Number of features to permute.
    generator : torch.Generator, default=None
        Source of the permutation.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.coupling import FixedPermutation
    >>> perm = FixedPermutation(3, generator=torch.Generator().manual_seed(0))
    >>> y, log_det = perm(torch.tensor([[1.0, 2.0, 3.0]]))
    >>> sorted(y.tolist()[0]), log_det
    ([1.0, 2.0, 3.0], tensor([0.]))
    """

    def __init__(self, n_features, generator=None):
        super().__init__()
        perm = torch.randperm(n_features, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def _load_from_state_dict(
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,
        unexpected_keys,
        error_msgs,
    ):
        # Weights read from a file: an index that is not a permutation would
        # fail at use, or silently duplicate a feature and break invertibility.
        perm = state_dict.get(prefix + "perm")
        inverse = state_dict.get(prefix + "inverse_perm")
        if (
            perm is not None
            and inverse is not None
            and perm.shape == inverse.shape == self.perm.shape
            and not _inverse_permutations(perm, inverse)
        ):
            error_msgs.append(
                f"{prefix}perm and {prefix}inverse_perm are not a permutation "
                "and its inverse."
            )
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    def forward(self, x):
        """Permute the columns of ``x``; the log-determinant is zero."""
        # index_select, not x[:, perm]: advanced indexing and its backward
        # cost about three times as much.
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, y):
        """Undo the permutation."""
        return y.index_select(1, self.inverse_perm)


def _inverse_permutations(perm, inverse):
    """Whether ``perm`` is a permutation of ``0..n-1`` and ``inverse`` its inverse."""
    if perm.dtype != torch.int64 or inverse.dtype != torch.int64 or perm.dim() != 1:
        return False
    identity = torch.arange(len(perm), device=perm.device)
    return torch.equal(torch.sort(perm).values, identity) and torch.equal(
        inverse[perm], identity
    )


def _check_orthogonal(state_dict, key, like, error_msgs):
    """Report a square matrix loaded into ``key`` that is not orthogonal.

    Mixing layers claim a log-determinant of zero; a matrix that is not
    orthogonal would make every density silently wrong. The tolerance, the
    square root of the machine epsilon, is far above the rounding of a QR
    factor (about 1e-6 in float32). A matrix of the wrong shape is left to
    ``load_state_dict``'s own report.
    """
    matrix = state_dict.get(key)
    if matrix is None or matrix.shape != like.shape:
        return
    if matrix.is_floating_point():
        identity = torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)
        error = (matrix.T @ matrix - identity).abs()
        # NaN compares False, so a matrix holding NaN is reported too.
        if bool((error <= math.sqrt(torch.finfo(matrix.dtype).eps)).all()):
            return
    error_msgs.append(f"{key} is not an orthogonal matrix.")


class _OrthogonalBuffer(nn.Module):
    """A module whose buffer ``_orthogonal`` (a name) is an orthogonal matrix.

    Changing the module's dtype re-orthogonalises the matrix in the new
    dtype: a float32 matrix cast to float64 is orthogonal only to about 1e-7,
    which would spoil float64 round trips. Loading a matrix that is not
    orthogonal is an error, since the layer claims a log-determinant that
    rests on it.
    """

    _orthogonal = "weight"

    def _apply(self, fn, recurse=True):
        # nn.Module funnels every dtype and device move through _apply.
        dtype = getattr(self, self._orthogonal).dtype
        super()._apply(fn, recurse)
        matrix = getattr(self, self._orthogonal)
        if matrix.dtype != dtype:
            setattr(self, self._orthogonal, _sign_corrected_q(matrix))
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args):
        *_, error_msgs = args
        key = prefix + self._orthogonal
        _check_orthogonal(state_dict, key, getattr(self, self._orthogonal), error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args)


def _sign_corrected_q(matrix):
    # Fixing the signs of R's diagonal makes the QR factorisation unique: Q of
    # a Gaussian matrix is then Haar distributed, and Q of a nearly orthogonal
    # matrix is that matrix, orthogonalised.
    q, r = torch.linalg.qr(matrix)
    return q * torch.sign(torch.diagonal(r))


class FixedOrthogonal(_OrthogonalBuffer):
    """A random orthogonal mixing of the features, drawn once and never trained.

    The matrix is the Haar-distributed orthogonal factor of a Gaussian matrix,
    so the log-determinant is zero. Changing the module's dtype (for example
    with ``module.double()``) re-orthogonalises the matrix in the new dtype:
    a float32 matrix cast to float64 is orthogonal only to about 1e-7, which
    would spoil float64 round trips.

    Parameters
    ----------
    n_features : int
        Number of features to mix.
    generator : torch.Generator, default=None
        Source of the matrix.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.coupling import FixedOrthogonal
    >>> mix = FixedOrthogonal(3, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(2, 3)
    >>> y, log_det = mix(x)
    >>> torch.allclose(y.norm(dim=1), x.norm(dim=1)), log_det
    (True, tensor([0., 0.]))
    """

    def __init__(self, n_features, generator=None):
        super().__init__()
        gaussian = torch.randn(n_features, n_features, generator=generator)
        self.register_buffer("weight", _sign_corrected_q(gaussian))

    def forward(self, x):
        """Rotate the rows of ``x``; the log-determinant is zero."""
        return x @ self.weight, x.new_zeros(x.shape[0])

    def inverse(self, y):
        """Undo the rotation."""
        return y @ self.weight.T


class PrincipalSplit(nn.Module):
    """A fixed linear bijection: principal-component scores and the residual.

    For orthonormal columns ``basis`` (``n_features`` x ``k``), a centred row
    ``c = x - shift`` has the scores ``z = c @ basis`` and the residual
    ``r = c - z @ basis.T``, which has ``n_features`` entries but only
    ``n_features - k`` degrees of freedom. The layer outputs the ``k``
    scores at the positions ``code_positions`` and the residual's entries at
    every feature but ``k`` dropped ones (chosen so that they can be recovered
    from the rest stably) at the other positions, in order; all outputs are
    multiplied by ``exp(log_scale)``. The inverse recovers the dropped
    entries from ``basis.T @ r = 0``.

    Unlike a rotation onto the principal axes, the map keeps every discarded
    output aligned with one feature of the data: on images, the residual of
    one pixel. Its log-determinant is ``log|det basis[dropped]|`` plus
    ``n_features * log_scale``, the same for every row. With ``k = 0`` (the
    default) it only centres and scales; until :meth:`set_` it is the
    identity. Changing the
    module's dtype re-orthonormalises the basis in the new dtype, which keeps
    float64 round trips exact.

    Parameters
    ----------
    n_features : int
        Width of the input and output.
    n_components : int, default=0
        Number of scores ``k``.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.coupling import PrincipalSplit
    >>> layer = PrincipalSplit(3, 1)
    >>> basis = torch.tensor([[0.6], [0.8], [0.0]])
    >>> layer.set_(torch.zeros(3), basis, code_positions=[2])
    >>> y, log_det = layer(torch.tensor([[3.0, 4.0, 1.0]]))
    >>> y  # the residual of features 1 and 2, then the score
    tensor([[0., 1., 5.]])
    >>> layer.inverse(y)
    tensor([[3., 4., 1.]])
    """

    def __init__(self, n_features, n_components=0):
        super().__init__()
        self.n_features = n_features
        self.n_components = n_components
        n_rest = n_features - n_components
        self.register_buffer("shift", torch.zeros(n_features))
        self.register_buffer("log_scale", torch.zeros(()))
        # Until set_, the basis is the last k axes, which makes the identity.
        self.register_buffer("basis", torch.eye(n_features)[:, n_rest:])
        # Output j is column output_index[j] of [residual, scores].
        self.register_buffer(
            "output_index",
            torch.cat([torch.arange(n_rest), n_features + torch.arange(n_components)]),
        )
        # Which outputs hold the scores, and which the kept residual entries.
        self.register_buffer("code_positions", torch.arange(n_rest, n_features))
        self.register_buffer("residual_positions", torch.arange(n_rest))
        # Feature i of the residual is column feature_index[i] of
        # [kept residual entries, dropped ones].
        self.register_buffer("feature_index", torch.arange(n_features))
        # dropped residual entries = -(kept residual entries) @ recovery.
        self.register_buffer("recovery", torch.zeros(n_rest, n_components))
        self.register_buffer("log_abs_det", torch.zeros(()))

    def set_(self, shift, basis, code_positions, log_scale=0.0):
        """Set the centring, the principal basis, where scores go, and the scale.

        Parameters
        ----------
        shift : torch.Tensor of shape (n_features,)
            Subtracted from every row first.
        basis : torch.Tensor of shape (n_features, n_components)
            Orthonormal columns (re-orthonormalised here).
        code_positions : sequence of int
            The ``n_components`` distinct outputs that hold the scores, in
            the order of the columns of ``basis``.
        log_scale : float, default=0.0
            Log of the factor every output is multiplied by.
        """
        k, n = self.n_components, self.n_features
        basis = _sign_corrected_q(basis.to(torch.float64))
        # The k features whose residual is recovered from the others: those
        # where the basis is best conditioned (QR with column pivoting).
        pivots = scipy.linalg.qr(basis.T.numpy(), pivoting=True)[2] if k else []
        dropped = torch.as_tensor(pivots[:k], dtype=torch.long)
        is_dropped = torch.zeros(n, dtype=torch.bool)
        is_dropped[dropped] = True
        kept = torch.arange(n)[~is_dropped]
        dropped = torch.sort(dropped).values
        code_positions = torch.as_tensor(code_positions, dtype=torch.long)
        is_code = torch.zeros(n, dtype=torch.bool)
        is_code[code_positions] = True
        if int(is_code.sum()) != k:
            raise ValueError(f"code_positions must be {k} distinct outputs.")
        residual_positions = torch.arange(n)[~is_code]
        output_index = torch.empty(n, dtype=torch.long)
        output_index[residual_positions] = kept
        output_index[code_positions] = n + torch.arange(k)
        feature_index = torch.empty(n, dtype=torch.long)
        feature_index[kept] = torch.arange(n - k)
        feature_index[dropped] = n - k + torch.arange(k)
        with torch.no_grad():
            self.shift.copy_(shift)
            self.log_scale.fill_(float(log_scale))
            self.output_index.copy_(output_index)
            self.code_positions.copy_(code_positions)
            self.residual_positions.copy_(residual_positions)
            self.feature_index.copy_(feature_index)
            self._set_basis(basis, kept, dropped)

    def _set_basis(self, basis, kept=None, dropped=None):
        if kept is None:
            dropped = self.feature_index.argsort()[
                self.n_features - self.n_components :
            ]
            kept = self.feature_index.argsort()[: self.n_features - self.n_components]
        square = basis[dropped]
        self.basis.copy_(basis)
        self.recovery.copy_(basis[kept] @ torch.linalg.inv(square))
        self.log_abs_det.copy_(torch.linalg.slogdet(square).logabsdet)

    def _apply(self, fn, recurse=True):
        # nn.Module funnels every dtype and device move through _apply.
        dtype = self.basis.dtype
        super()._apply(fn, recurse)
        if self.basis.dtype != dtype and self.n_components:
            with torch.no_grad():
                self._set_basis(_sign_corrected_q(self.basis))
        return self

    def forward(self, x):
        """Map ``x`` to ``(y, log_det)``; ``log_det`` is the same for every row."""
        centred = x - self.shift
        if self.n_components:
            scores = centred @ self.basis
            residual = torch.addmm(centred, scores, self.basis.T, alpha=-1)
            centred = torch.cat([residual, scores], dim=1).index_select(
                1, self.output_index
            )
        log_det = self.log_abs_det + self.n_features * self.log_scale
        return centred * torch.exp(self.log_scale), log_det.expand(x.shape[0])

    def inverse(self, y):
        """The ``x`` with ``forward(x)[0] == y``."""
        y = y * torch.exp(-self.log_scale)
        if self.n_components:
            scores = y.index_select(1, self.code_positions)
            kept = y.index_select(1, self.residual_positions)
            residual = torch.cat([kept, -(kept @ self.recovery)], dim=1).index_select(
                1, self.feature_index
            )
            y = torch.addmm(residual, scores, self.basis.T)
        return y + self.shift


class FixedAffine(_OrthogonalBuffer):
    """A fixed affine map ``y = ((x - shift) @ rotation) * exp(log_scale)``.

    Centres the rows, rotates them by an orthogonal matrix and scales each
    output; nothing is trained. It starts as the identity; :meth:`set_` sets
    it, for example from the training data before training (see
    :meth:`skvae.nn.INNAutoencoderModule.initialize_from_data`). The
    log-determinant is ``sum(log_scale)`` for every row, exactly (a rotation
    preserves volume), so a density through this layer stays normalised. As
    in :class:`FixedOrthogonal`, changing the module's dtype re-orthogonalises
    the rotation in the new dtype, which keeps float64 round trips exact.

    Parameters
    ----------
    n_features : int
        Width of the input and output.

    Examples
    --------
    >>> import math, torch
    >>> from skvae.nn.coupling import FixedAffine
    >>> layer = FixedAffine(2)
    >>> quarter_turn = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    >>> log_scale = torch.tensor([0.0, math.log(2)])
    >>> layer.set_(torch.tensor([1.0, 0.0]), quarter_turn, log_scale)
    >>> y, log_det = layer(torch.tensor([[2.0, 1.0]]))
    >>> y, log_det
    (tensor([[-1.,  2.]]), tensor([0.6931]))
    >>> layer.inverse(y)
    tensor([[2., 1.]])
    """

    _orthogonal = "rotation"

    def __init__(self, n_features):
        super().__init__()
        self.register_buffer("shift", torch.zeros(n_features))
        self.register_buffer("rotation", torch.eye(n_features))
        self.register_buffer("log_scale", torch.zeros(n_features))

    def set_(self, shift, rotation, log_scale=None):
        """Set the centring, the rotation and (optionally) the log-scales.

        Parameters
        ----------
        shift : torch.Tensor of shape (n_features,)
            Subtracted from every row first.
        rotation : torch.Tensor of shape (n_features, n_features)
            Orthogonal matrix the centred rows are multiplied by; it is
            re-orthogonalised (its sign-corrected QR factor is kept).
        log_scale : torch.Tensor of shape (n_features,), default=None
            Log of the factor each output is multiplied by; None keeps 0.
        """
        with torch.no_grad():
            self.shift.copy_(shift)
            self.rotation.copy_(_sign_corrected_q(rotation.to(self.rotation.dtype)))
            self.log_scale.copy_(0.0 if log_scale is None else log_scale)

    def forward(self, x):
        """Map ``x`` to ``(y, log_det)``; ``log_det`` is ``sum(log_scale)``."""
        y = ((x - self.shift) @ self.rotation) * torch.exp(self.log_scale)
        return y, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y):
        """The ``x`` with ``forward(x)[0] == y``."""
        return (y * torch.exp(-self.log_scale)) @ self.rotation.T + self.shift
