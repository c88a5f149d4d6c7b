//! The repository's error type: every variant names the object (and, for data, the backup and
//! the offset) so a user can tell what failed and where.

/// What went wrong with a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The object store or directory refused an operation.
    #[error("cannot {op} object '{object}': {detail}")]
    Backend {
        /// `put`, `get`, `list`, `delete`, `head`.
        op: &'static str,
        /// The object's name inside the repository.
        object: String,
        /// The backend's message.
        detail: String,
    },
    /// An object that must exist is missing.
    #[error("object '{object}' is missing from the repository{context}; run `fss repo verify URL` to see what is damaged")]
    Missing {
        /// The object's name.
        object: String,
        /// What needed it (", needed by backup X"), or empty.
        context: String,
    },
    /// The key is wrong for this repository.
    #[error("the key does not open this repository: {detail}; give the --key file the repository was created with")]
    WrongKey {
        /// What was tried.
        detail: String,
    },
    /// The repository is encrypted and no key was given.
    #[error("the repository is encrypted; give its key file with --key KEYFILE")]
    KeyRequired,
    /// A chunk of a backup is damaged.
    #[error("backup {backup}: object '{object}' at offset {offset}: {detail}; the backup cannot be restored from this repository as it is (run `fss repo verify URL --read-data`)")]
    Damaged {
        /// The backup's id.
        backup: String,
        /// The pack object.
        object: String,
        /// The offset in the object.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A metadata object cannot be decoded.
    #[error("object '{object}' is damaged: {detail}")]
    Corrupt {
        /// The object's name.
        object: String,
        /// What is wrong.
        detail: String,
    },
    /// No backup has that id.
    #[error("no backup '{0}' in the repository; `fss repo list URL` shows the backups")]
    NoSuchBackup(String),
    /// An argument is unusable (a URL, a key file, a policy).
    #[error("{0}")]
    Invalid(String),
    /// Local I/O failed (a key file, a restore target).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Results of repository operations.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

impl RepoError {
    /// What a backend call on object `name` failed with: `Missing` when the object is not
    /// there, else `Backend` with the backend's own words.
    pub(crate) fn backend(op: &'static str, name: &str, missing: bool, detail: String) -> Self {
        if missing {
            return RepoError::Missing {
                object: name.to_string(),
                context: String::new(),
            };
        }
        RepoError::Backend {
            op,
            object: name.to_string(),
            detail,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RepoError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn corrupt(object: &str, detail: impl Into<String>) -> Self {
        RepoError::Corrupt {
            object: object.to_string(),
            detail: detail.into(),
        }
    }
}
