//! General exception codes (sas-protocol.md §5): what a general poll returns and what an RTE frame
//! carries. Every code the reference names has a variant; any other byte is kept as
//! [`Exception::Unknown`] so that nothing a machine reports is ever dropped.

macro_rules! exceptions {
    ($( $(#[$doc:meta])* $code:literal => $name:ident, )*) => {
        /// A SAS general exception code. Variants follow the code order of the spec.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Exception {
            $( $(#[$doc])* $name, )*
            /// A code this crate does not name; the raw byte is preserved.
            Unknown(u8),
        }

        impl Exception {
            /// Every named exception, in code order.
            pub const ALL: &'static [Self] = &[$(Self::$name,)*];

            /// Maps a wire byte to its exception; unknown codes are preserved, never dropped.
            pub fn from_code(code: u8) -> Self {
                match code {
                    $( $code => Self::$name, )*
                    other => Self::Unknown(other),
                }
            }

            /// The wire byte.
            pub fn code(self) -> u8 {
                match self {
                    $( Self::$name => $code, )*
                    Self::Unknown(code) => code,
                }
            }

            /// The spec's variant name, stable for logs and canonical events.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$name => stringify!($name), )*
                    Self::Unknown(_) => "Unknown",
                }
            }
        }
    };
}

exceptions! {
    /// 0x00 — no activity.
    0x00 => NoActivity,
    /// 0x11 — slot (main) door opened.
    0x11 => SlotDoorOpened,
    /// 0x12 — slot door closed.
    0x12 => SlotDoorClosed,
    /// 0x13 — drop door opened.
    0x13 => DropDoorOpened,
    /// 0x14 — drop door closed.
    0x14 => DropDoorClosed,
    /// 0x15 — card cage (logic board) opened.
    0x15 => CardCageOpened,
    /// 0x16 — card cage closed.
    0x16 => CardCageClosed,
    /// 0x17 — AC power applied to the machine.
    0x17 => AcPowerApplied,
    /// 0x18 — AC power lost.
    0x18 => AcPowerLost,
    /// 0x19 — cashbox door opened.
    0x19 => CashboxDoorOpened,
    /// 0x1A — cashbox door closed.
    0x1A => CashboxDoorClosed,
    /// 0x1B — cashbox removed.
    0x1B => CashboxRemoved,
    /// 0x1C — cashbox installed.
    0x1C => CashboxInstalled,
    /// 0x1D — belly door opened.
    0x1D => BellyDoorOpened,
    /// 0x1E — belly door closed.
    0x1E => BellyDoorClosed,
    /// 0x1F — no activity, waiting for player input (obsolete).
    0x1F => NoActivityWaitingForInput,
    /// 0x20 — general tilt.
    0x20 => GeneralTilt,
    /// 0x21 — coin-in tilt.
    0x21 => CoinInTilt,
    /// 0x22 — coin-out tilt.
    0x22 => CoinOutTilt,
    /// 0x23 — hopper empty.
    0x23 => HopperEmpty,
    /// 0x24 — extra coin paid.
    0x24 => ExtraCoinPaid,
    /// 0x25 — diverter malfunction.
    0x25 => DiverterMalfunction,
    /// 0x27 — cashbox full.
    0x27 => CashboxFull,
    /// 0x28 — bill jam.
    0x28 => BillJam,
    /// 0x29 — bill acceptor hardware failure.
    0x29 => BillAcceptorFailure,
    /// 0x2A — reverse bill detected.
    0x2A => ReverseBill,
    /// 0x2B — bill rejected.
    0x2B => BillRejected,
    /// 0x2C — counterfeit bill detected.
    0x2C => CounterfeitBill,
    /// 0x2D — reverse coin-in detected.
    0x2D => ReverseCoin,
    /// 0x2E — cashbox near full.
    0x2E => CashboxNearFull,
    /// 0x2F — bill acceptor version changed (SAS 6.03).
    0x2F => BillAcceptorVersionChanged,
    /// 0x31 — CMOS RAM error, data recovered from EEPROM.
    0x31 => CmosRamErrorRecovered,
    /// 0x32 — CMOS RAM error, no data recovered.
    0x32 => CmosRamErrorNotRecovered,
    /// 0x33 — CMOS RAM error, bad device.
    0x33 => CmosRamErrorBadDevice,
    /// 0x34 — EEPROM data error; the machine then sets address 0 and goes silent.
    0x34 => EepromDataError,
    /// 0x35 — EEPROM bad device.
    0x35 => EepromBadDevice,
    /// 0x36 — EPROM error, different checksum (version changed).
    0x36 => EpromChecksumChanged,
    /// 0x37 — EPROM error, bad checksum compare.
    0x37 => EpromBadChecksum,
    /// 0x38 — partitioned EPROM error, checksum changed.
    0x38 => PartitionedEpromChecksumChanged,
    /// 0x39 — partitioned EPROM error, bad checksum compare.
    0x39 => PartitionedEpromBadChecksum,
    /// 0x3A — memory error reset (RAM clear): meters are no longer valid.
    0x3A => MemoryErrorReset,
    /// 0x3B — low backup battery.
    0x3B => LowBackupBattery,
    /// 0x3C — operator changed options.
    0x3C => OperatorChangedOptions,
    /// 0x3D — cash-out ticket printed (priority).
    0x3D => CashoutTicketPrinted,
    /// 0x3E — handpay validated (priority).
    0x3E => HandpayValidated,
    /// 0x3F — validation ID not configured (priority).
    0x3F => ValidationIdNotConfigured,
    /// 0x40 — reel tilt, unspecified reel.
    0x40 => ReelTilt,
    /// 0x41 — reel 1 tilt.
    0x41 => Reel1Tilt,
    /// 0x42 — reel 2 tilt.
    0x42 => Reel2Tilt,
    /// 0x43 — reel 3 tilt.
    0x43 => Reel3Tilt,
    /// 0x44 — reel 4 tilt.
    0x44 => Reel4Tilt,
    /// 0x45 — reel 5 tilt.
    0x45 => Reel5Tilt,
    /// 0x46 — reel mechanism disconnected.
    0x46 => ReelMechanismDisconnected,
    /// 0x47 — $1.00 bill accepted (non-RTE).
    0x47 => Bill1Accepted,
    /// 0x48 — $5.00 bill accepted.
    0x48 => Bill5Accepted,
    /// 0x49 — $10.00 bill accepted.
    0x49 => Bill10Accepted,
    /// 0x4A — $20.00 bill accepted.
    0x4A => Bill20Accepted,
    /// 0x4B — $50.00 bill accepted.
    0x4B => Bill50Accepted,
    /// 0x4C — $100.00 bill accepted.
    0x4C => Bill100Accepted,
    /// 0x4D — $2.00 bill accepted.
    0x4D => Bill2Accepted,
    /// 0x4E — $500.00 bill accepted.
    0x4E => Bill500Accepted,
    /// 0x4F — bill accepted (RTE carries country, denomination and count).
    0x4F => BillAccepted,
    /// 0x50 — $200.00 bill accepted.
    0x50 => Bill200Accepted,
    /// 0x51 — handpay pending (priority; re-issued every 15 s until LP1B is read).
    0x51 => HandpayPending,
    /// 0x52 — handpay reset (priority).
    0x52 => HandpayReset,
    /// 0x53 — no progressive information for 5 s.
    0x53 => NoProgressiveInfo,
    /// 0x54 — progressive win (machine paid).
    0x54 => ProgressiveWin,
    /// 0x55 — player cancelled the handpay request.
    0x55 => HandpayCancelledByPlayer,
    /// 0x56 — SAS progressive level hit (priority).
    0x56 => SasProgressiveLevelHit,
    /// 0x57 — system validation request (priority).
    0x57 => SystemValidationRequest,
    /// 0x59 — non-SAS progressive level hit.
    0x59 => NonSasProgressiveHit,
    /// 0x5A — jackpot handpay keyed off to machine pay.
    0x5A => JackpotKeyedOffToMachinePay,
    /// 0x60 — printer communication error.
    0x60 => PrinterCommError,
    /// 0x61 — printer paper out.
    0x61 => PrinterPaperOut,
    /// 0x66 — cash-out button pressed.
    0x66 => CashoutButtonPressed,
    /// 0x67 — ticket inserted (priority).
    0x67 => TicketInserted,
    /// 0x68 — ticket transfer complete (priority).
    0x68 => TicketTransferComplete,
    /// 0x69 — AFT transfer complete (priority).
    0x69 => AftTransferComplete,
    /// 0x6A — AFT request for host cash-out (priority).
    0x6A => AftRequestHostCashout,
    /// 0x6B — AFT request for host to cash out win (priority).
    0x6B => AftRequestHostCashoutWin,
    /// 0x6C — AFT request to register (priority).
    0x6C => AftRequestRegister,
    /// 0x6D — AFT registration acknowledged (priority).
    0x6D => AftRegistrationAcknowledged,
    /// 0x6E — AFT registration cancelled.
    0x6E => AftRegistrationCancelled,
    /// 0x6F — game locked (priority; re-issued every 5 s while locked).
    0x6F => GameLocked,
    /// 0x70 — exception buffer overflow (priority): events were lost on the machine.
    0x70 => ExceptionBufferOverflow,
    /// 0x71 — change lamp on.
    0x71 => ChangeLampOn,
    /// 0x72 — change lamp off.
    0x72 => ChangeLampOff,
    /// 0x74 — printer paper low.
    0x74 => PrinterPaperLow,
    /// 0x75 — printer power off.
    0x75 => PrinterPowerOff,
    /// 0x76 — printer power on.
    0x76 => PrinterPowerOn,
    /// 0x77 — replace printer ribbon.
    0x77 => ReplacePrinterRibbon,
    /// 0x78 — printer carriage jammed.
    0x78 => PrinterCarriageJam,
    /// 0x79 — coin-in lockout malfunction.
    0x79 => CoinInLockoutMalfunction,
    /// 0x7A — soft (lifetime) meters reset to zero.
    0x7A => SoftMetersReset,
    /// 0x7B — bill validator period totals reset.
    0x7B => BillValidatorTotalsReset,
    /// 0x7C — legacy bonus pay / multiplied jackpot awarded.
    0x7C => LegacyBonusAwarded,
    /// 0x7E — game started (RTE carries the wager).
    0x7E => GameStarted,
    /// 0x7F — game ended (RTE carries the win).
    0x7F => GameEnded,
    /// 0x80 — hopper full.
    0x80 => HopperFull,
    /// 0x81 — hopper level low.
    0x81 => HopperLow,
    /// 0x82 — display meters or attendant menu entered.
    0x82 => AttendantMenuEntered,
    /// 0x83 — display meters or attendant menu exited.
    0x83 => AttendantMenuExited,
    /// 0x84 — self-test or operator menu entered.
    0x84 => OperatorMenuEntered,
    /// 0x85 — self-test or operator menu exited.
    0x85 => OperatorMenuExited,
    /// 0x86 — machine out of service (by attendant).
    0x86 => OutOfService,
    /// 0x87 — player requested draw cards (RTE only).
    0x87 => DrawCardsRequested,
    /// 0x88 — reel N has stopped (RTE only).
    0x88 => ReelStopped,
    /// 0x89 — coin/credit wagered (RTE only).
    0x89 => CreditWagered,
    /// 0x8A — game recall entry displayed.
    0x8A => GameRecallEntryDisplayed,
    /// 0x8B — card held / not held (RTE only).
    0x8B => CardHeld,
    /// 0x8C — game selected.
    0x8C => GameSelected,
    /// 0x8E — component list changed.
    0x8E => ComponentListChanged,
    /// 0x8F — authentication complete (priority).
    0x8F => AuthenticationComplete,
    /// 0x98 — power-off card cage access.
    0x98 => PowerOffCardCageAccess,
    /// 0x99 — power-off slot door access.
    0x99 => PowerOffSlotDoorAccess,
    /// 0x9A — power-off cashbox door access.
    0x9A => PowerOffCashboxDoorAccess,
    /// 0x9B — power-off drop door access.
    0x9B => PowerOffDropDoorAccess,
    /// 0x9E — game-play period (session) started.
    0x9E => SessionStarted,
    /// 0x9F — game-play period (session) ended.
    0x9F => SessionEnded,
    /// 0xA0 — meter change pending.
    0xA0 => MeterChangePending,
    /// 0xA1 — meter change cancelled.
    0xA1 => MeterChangeCancelled,
    /// 0xA2 — enabled games or denominations changed.
    0xA2 => EnabledGamesChanged,
}

impl Exception {
    /// Priority exceptions are reported before queued ones and are not subject to queue overflow
    /// (sas-protocol.md §5, "P").
    pub fn is_priority(self) -> bool {
        matches!(
            self,
            Self::CashoutTicketPrinted
                | Self::HandpayValidated
                | Self::ValidationIdNotConfigured
                | Self::HandpayPending
                | Self::HandpayReset
                | Self::SasProgressiveLevelHit
                | Self::SystemValidationRequest
                | Self::TicketInserted
                | Self::TicketTransferComplete
                | Self::AftTransferComplete
                | Self::AftRequestHostCashout
                | Self::AftRequestHostCashoutWin
                | Self::AftRequestRegister
                | Self::AftRegistrationAcknowledged
                | Self::GameLocked
                | Self::ExceptionBufferOverflow
                | Self::AuthenticationComplete
        )
    }

    /// Exceptions after which every meter and the machine's configuration must be read again,
    /// because events were lost or the meters were reset (sas-protocol.md §13 item 8).
    pub fn requires_resync(self) -> bool {
        matches!(
            self,
            Self::ExceptionBufferOverflow
                | Self::SoftMetersReset
                | Self::MemoryErrorReset
                | Self::CmosRamErrorRecovered
                | Self::CmosRamErrorNotRecovered
                | Self::CmosRamErrorBadDevice
                | Self::EepromDataError
                | Self::EepromBadDevice
                | Self::OperatorChangedOptions
        )
    }

    /// "Nothing to report": 0x00 and the obsolete 0x1F.
    pub fn is_idle(self) -> bool {
        matches!(self, Self::NoActivity | Self::NoActivityWaitingForInput)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips_and_unknown_codes_are_preserved() {
        for code in 0..=u8::MAX {
            let exception = Exception::from_code(code);
            assert_eq!(exception.code(), code);
        }
        assert_eq!(Exception::from_code(0x26), Exception::Unknown(0x26));
        assert_eq!(Exception::from_code(0xFE), Exception::Unknown(0xFE));
    }

    #[test]
    fn named_codes_are_unique_and_in_spec_order() {
        let codes: Vec<u8> = Exception::ALL.iter().map(|e| e.code()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:02x?}");
        assert!(Exception::ALL.iter().all(|e| !matches!(e, Exception::Unknown(_))));
    }

    #[test]
    fn the_gateway_relevant_codes_have_the_spec_values() {
        assert_eq!(Exception::GameStarted.code(), 0x7E);
        assert_eq!(Exception::GameEnded.code(), 0x7F);
        assert_eq!(Exception::GameSelected.code(), 0x8C);
        assert_eq!(Exception::HandpayPending.code(), 0x51);
        assert_eq!(Exception::ExceptionBufferOverflow.code(), 0x70);
        assert_eq!(Exception::MemoryErrorReset.code(), 0x3A);
        assert!(Exception::ExceptionBufferOverflow.is_priority());
        assert!(Exception::MemoryErrorReset.requires_resync());
        assert!(!Exception::SlotDoorOpened.is_priority());
    }
}
