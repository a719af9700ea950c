//! Code generation: the constructor, the table entry, and the child-side runner.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::parse::ProcessFn;

/// Generates the `#[process]` expansion (see the crate docs of `pycsp-core`'s `process`
/// module for what runs where).
pub(crate) fn expand(m: &ProcessFn) -> TokenStream {
    let func = &m.func;
    let attrs = &func.attrs;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let name_str = ident.to_string();
    let block = &func.block;
    let ret = &m.ret;
    let args: Vec<_> = (0..m.params.len())
        .map(|i| format_ident!("__pycsp_arg{i}"))
        .collect();
    let tys: Vec<_> = m.params.iter().map(|(_, t)| t).collect();
    let pats: Vec<_> = m.params.iter().map(|(p, _)| p).collect();
    // `line!()`/`column!()` at the function's name make the registered name unique even for
    // two processes of one name in different function bodies of a module.
    let name = quote_spanned! {ident.span()=>
        ::core::concat!(::core::module_path!(), "::", #name_str, "@", ::core::line!(), ":", ::core::column!())
    };
    // Point "not serializable" errors at the type that is not.
    let checks = tys
        .iter()
        .map(|t| quote_spanned! {t.span()=> __pycsp_check::<#t>(); });
    let ret_check = quote_spanned! {ret.span()=> __pycsp_check::<#ret>(); };
    quote! {
        #(#attrs)*
        #vis fn #ident(#(#args: #tys),*) -> ::pycsp::Process<#ret> {
            const __PYCSP_NAME: &str = #name;

            #[::pycsp::__private::linkme::distributed_slice(::pycsp::__private::PROCESSES)]
            #[linkme(crate = ::pycsp::__private::linkme)]
            static __PYCSP_ENTRY: ::pycsp::__private::ProcessEntry = ::pycsp::__private::ProcessEntry {
                name: __PYCSP_NAME,
                run: __pycsp_run,
            };

            // A re-executed child runs its process from this constructor, before `main`.
            // SAFETY: `.init_array` entries are plain `extern "C" fn()` pointers called once by
            // the loader; the function only reads the environment and returns unless this
            // process was started as a pycsp child.
            #[used]
            #[unsafe(link_section = ".init_array")]
            static __PYCSP_INIT: extern "C" fn() = {
                extern "C" fn __pycsp_init() {
                    ::pycsp::__private::child_entry()
                }
                __pycsp_init
            };

            #[allow(clippy::needless_pass_by_value, unused_mut)]
            fn __pycsp_body(#(#pats: #tys),*) -> #ret {
                // Dropped after the body's locals and before the parameters: see ReturnGuard.
                let __pycsp_returning = ::pycsp::__private::ReturnGuard;
                #block
            }

            fn __pycsp_run(
                __pycsp_args: &[u8],
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                let (#(#args,)*): (#(#tys,)*) = ::pycsp::__private::decode_args(__pycsp_args)?;
                let __pycsp_ret = __pycsp_body(#(#args),*);
                {
                    #[allow(unused_imports)]
                    use ::pycsp::__private::{ViaAny as _, ViaChannelResult as _, ViaErrorResult as _};
                    (&::pycsp::__private::Probe(&__pycsp_ret)).__pycsp_propagate();
                }
                ::pycsp::__private::retire_deferred();
                ::pycsp::__private::encode_return(&__pycsp_ret)
            }

            #[allow(dead_code)]
            fn __pycsp_types_cross_process_boundaries() {
                fn __pycsp_check<T: ::pycsp::__private::CrossesProcesses>() {}
                #(#checks)*
                #ret_check
            }

            ::pycsp::Process::__new(__PYCSP_NAME, (#(#args,)*))
        }
    }
}
