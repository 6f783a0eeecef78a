//! Reading a call's results out of the plugin's memory within a budget.
//!
//! The canonical ABI copies every string and list a plugin returns into host
//! memory. The plugin's own memory is capped, but its results are not: a
//! list of a million outputs may all point at the same megabyte of bytes,
//! and the host would copy that megabyte a million times. Here every list
//! and string is charged to the call's budget (`limits.results_mib`) before
//! it is copied, so a plugin can make the host allocate at most that much.
//!
//! The types mirror the contract's `outcome` and are turned into the
//! bindings' own types once lifted, without copying again.

use crate::bindings::{Effect, ErrorInfo, Header, Outcome, Output};
use std::cell::Cell;
use std::fmt;
use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

thread_local! {
    /// Bytes the call being lifted on this thread may still copy.
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// That call's whole budget, for the error message.
    static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The results of one call are larger than the stage's budget.
#[derive(Debug, Clone, Copy)]
pub struct OverBudget {
    /// The budget, in bytes.
    pub budget: usize,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the call's results are larger than {} MiB (limits.results_mib): too many outputs or effects, or \
             values too large",
            self.budget >> 20
        )
    }
}

impl std::error::Error for OverBudget {}

/// Runs `call` with `budget` bytes for lifting its results; a result over
/// the budget fails the call with [`OverBudget`].
pub fn within<R>(budget: usize, call: impl FnOnce() -> R) -> R {
    LEFT.with(|left| left.set(budget));
    BUDGET.with(|b| b.set(budget));
    let result = call();
    LEFT.with(|left| left.set(usize::MAX));
    result
}

/// Charges `bytes` to the budget of the call being lifted on this thread.
pub(super) fn charge(bytes: usize) -> wasmtime::Result<()> {
    LEFT.with(|left| match left.get().checked_sub(bytes) {
        Some(rest) => {
            left.set(rest);
            Ok(())
        }
        None => {
            left.set(0);
            let budget = BUDGET.with(Cell::get);
            Err(wasmtime::Error::new(OverBudget { budget }))
        }
    })
}

/// A string or list whose size is charged to the budget before it is copied.
pub struct Budgeted<T>(pub T);

/// What one element of a list costs: its size in host memory (at least a
/// byte, so that a list of unit values is not free).
trait Cost {
    fn cost(len: usize) -> usize;
}

impl Cost for String {
    fn cost(len: usize) -> usize {
        // The length of a latin1+utf16 string carries a tag in its top bit.
        len & 0x7fff_ffff
    }
}

impl<T> Cost for Vec<T> {
    fn cost(len: usize) -> usize {
        len.saturating_mul(size_of::<T>().max(1))
    }
}

macro_rules! budgeted {
    ($($ty:ty => $borrowed:ty, [$($generics:tt)*]),*) => {$(
        // SAFETY: the ABI, the lowered form and the type check are those of
        // the wrapped type, which does the lifting.
        unsafe impl<$($generics)*> ComponentType for Budgeted<$ty> {
            type Lower = [ValRaw; 2];
            const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;
            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
                <$borrowed as ComponentType>::typecheck(ty, types)
            }
        }

        // SAFETY: lifting is the wrapped type's, after the length (the
        // second word of a string or list, in registers or in memory) has
        // been charged.
        unsafe impl<$($generics)*> Lift for Budgeted<$ty> {
            fn linear_lift_from_flat(
                cx: &mut LiftContext<'_>,
                ty: InterfaceType,
                src: &Self::Lower,
            ) -> wasmtime::Result<Self> {
                charge(<$ty as Cost>::cost(src[1].get_u32() as usize))?;
                <$ty as Lift>::linear_lift_from_flat(cx, ty, src).map(Budgeted)
            }

            fn linear_lift_from_memory(
                cx: &mut LiftContext<'_>,
                ty: InterfaceType,
                bytes: &[u8],
            ) -> wasmtime::Result<Self> {
                let len = u32::from_le_bytes(bytes[4..8].try_into().expect("a pointer pair is 8 bytes"));
                charge(<$ty as Cost>::cost(len as usize))?;
                <$ty as Lift>::linear_lift_from_memory(cx, ty, bytes).map(Budgeted)
            }
        }
    )*};
}

budgeted!(String => str, [], Vec<T> => [T], [T: Lift]);

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct LiftedHeader {
    #[component(name = "name")]
    name: Budgeted<String>,
    #[component(name = "value")]
    value: Budgeted<Vec<u8>>,
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct LiftedOutput {
    #[component(name = "route")]
    route: Option<Budgeted<String>>,
    #[component(name = "key")]
    key: Option<Budgeted<Vec<u8>>>,
    #[component(name = "value")]
    value: Budgeted<Vec<u8>>,
    #[component(name = "headers")]
    headers: Budgeted<Vec<LiftedHeader>>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum LiftedEffect {
    #[component(name = "hash-incr")]
    HashIncr((Budgeted<String>, Budgeted<String>, i64)),
    #[component(name = "hash-set")]
    HashSet((Budgeted<String>, Budgeted<String>, Budgeted<String>)),
}

#[derive(ComponentType, Lift)]
#[component(record)]
pub struct LiftedErrorInfo {
    #[component(name = "reason")]
    reason: Budgeted<String>,
    #[component(name = "message")]
    message: Budgeted<String>,
}

/// One record's outcome, as the plugin returned it.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum LiftedOutcome {
    #[component(name = "emit")]
    Emit((Budgeted<Vec<LiftedOutput>>, Budgeted<Vec<LiftedEffect>>)),
    #[component(name = "filtered")]
    Filtered,
    #[component(name = "reject")]
    Reject(LiftedErrorInfo),
    #[component(name = "retry")]
    Retry(LiftedErrorInfo),
}

/// The results of `process`: one outcome per record.
pub type Results = (Budgeted<Vec<LiftedOutcome>>,);

impl From<LiftedErrorInfo> for ErrorInfo {
    fn from(e: LiftedErrorInfo) -> Self {
        ErrorInfo { reason: e.reason.0, message: e.message.0 }
    }
}

impl From<LiftedOutcome> for Outcome {
    fn from(outcome: LiftedOutcome) -> Self {
        match outcome {
            LiftedOutcome::Emit((outputs, effects)) => Outcome::Emit((
                outputs
                    .0
                    .into_iter()
                    .map(|o| Output {
                        route: o.route.map(|r| r.0),
                        key: o.key.map(|k| k.0),
                        value: o.value.0,
                        headers: o.headers.0.into_iter().map(|h| Header { name: h.name.0, value: h.value.0 }).collect(),
                    })
                    .collect(),
                effects
                    .0
                    .into_iter()
                    .map(|e| match e {
                        LiftedEffect::HashIncr((key, field, delta)) => Effect::HashIncr((key.0, field.0, delta)),
                        LiftedEffect::HashSet((key, field, value)) => Effect::HashSet((key.0, field.0, value.0)),
                    })
                    .collect(),
            )),
            LiftedOutcome::Filtered => Outcome::Filtered,
            LiftedOutcome::Reject(info) => Outcome::Reject(info.into()),
            LiftedOutcome::Retry(info) => Outcome::Retry(info.into()),
        }
    }
}
