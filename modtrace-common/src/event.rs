//! The kernel's records as userspace holds them once decoded: the type that
//! the decoder produces and the enrichment stage reads, so that neither of
//! those stages imports the other.
use alloc::boxed::Box;

use crate::{
    DeleteModuleEvent, EventHeader, FinitModuleEvent, InitModuleEvent, Invocation,
    ModuleRequestEvent, TaskInfo,
};

/// One syscall record or request as the kernel wrote it. The large records
/// are boxed so that moving an event does not copy kilobytes.
#[derive(Clone)]
pub enum KernelEvent {
    InitModule(Box<InitModuleEvent>),
    FinitModule(Box<FinitModuleEvent>),
    DeleteModule(Box<DeleteModuleEvent>),
    ModuleRequest(Box<ModuleRequestEvent>),
}

impl KernelEvent {
    /// The record kind it has in the output.
    pub fn kind(&self) -> &'static str {
        crate::kind_name(self.header().kind)
    }

    pub fn header(&self) -> &EventHeader {
        match self {
            Self::InitModule(e) => &e.header,
            Self::FinitModule(e) => &e.header,
            Self::DeleteModule(e) => &e.header,
            Self::ModuleRequest(e) => &e.header,
        }
    }

    pub fn task(&self) -> &TaskInfo {
        match self {
            Self::InitModule(e) => &e.task,
            Self::FinitModule(e) => &e.task,
            Self::DeleteModule(e) => &e.task,
            Self::ModuleRequest(e) => &e.task,
        }
    }

    /// How a load's caller was started; None for an unload or a request.
    pub fn invocation(&self) -> Option<&Invocation> {
        match self {
            Self::InitModule(e) => Some(&e.invocation),
            Self::FinitModule(e) => Some(&e.invocation),
            Self::DeleteModule(_) | Self::ModuleRequest(_) => None,
        }
    }
}
